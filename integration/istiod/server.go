package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes/fake"

	"istio.io/istio/pilot/pkg/features"
	istiogrpc "istio.io/istio/pilot/pkg/grpc"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/keepalive"
	kubelib "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/security"
	"istio.io/istio/pkg/spiffe"
	xdspkg "istio.io/istio/pkg/xds"
	"istio.io/istio/security/pkg/pki/ca"
	caserver "istio.io/istio/security/pkg/server/ca"
	"istio.io/istio/security/pkg/server/ca/authenticate"
	"istio.io/istio/security/pkg/server/ca/authenticate/kubeauth"
)

// options are the harness's command-line settings.
type options struct {
	dir         string
	addr        string
	trustDomain string
	clusterID   string
	config      string
}

// harness is istiod as the tests see it: the discovery server and the CA on one TLS port
// (istiod's 15012), and the fake cluster they read.
type harness struct {
	failer    *failer
	discovery *xds.FakeDiscoveryServer
	cluster   *fakeCluster
	tokens    *tokenIssuer
	grpc      *grpc.Server
	listener  net.Listener
}

func start(opts options) (*harness, error) {
	if !features.EnableAmbient {
		// Without it there is no ambient index and ztunnel nodes are refused.
		return nil, errors.New("PILOT_ENABLE_AMBIENT is not true in this process")
	}
	if err := os.MkdirAll(opts.dir, 0o755); err != nil {
		return nil, err
	}
	authority, err := loadOrCreateCA(opts.dir, opts.trustDomain)
	if err != nil {
		return nil, err
	}
	tokens, err := newTokenIssuer(opts.dir)
	if err != nil {
		return nil, err
	}
	f := &failer{}
	discovery := newDiscovery(f, opts, tokens)

	// The authenticators istiod's bootstrap installs, in its order (pilot/pkg/bootstrap/
	// server.go): a client certificate chaining to the root, then a Kubernetes token checked
	// by TokenReview in the cluster the caller names. XDS_AUTH (default true) hands the same
	// list to the discovery server; the identity check (PILOT_ENABLE_XDS_IDENTITY_CHECK,
	// default true) then matches it against the node's namespace and service account.
	authenticators := []security.Authenticator{
		&authenticate.ClientCertAuthenticator{},
		kubeauth.NewKubeJWTAuthenticator(discovery.Env(), discovery.KubeClient().Kube(),
			cluster.ID(opts.clusterID), nil, nil),
	}
	if features.XDSAuth {
		discovery.Discovery.Authenticators = authenticators
	}
	caServer, err := caserver.New(authority, maxWorkloadCertTTL, authenticators, nil)
	if err != nil {
		return nil, err
	}

	creds, err := serverTLS(authority, opts)
	if err != nil {
		return nil, err
	}
	// istiod's gRPC options (keepalive, max message size) plus its TLS.
	grpcOpts := istiogrpc.ServerOptions(keepalive.DefaultOption(), xdspkg.RecordRecvSize)
	server := grpc.NewServer(append(grpcOpts, grpc.Creds(creds))...)
	discovery.Discovery.Register(server)
	caServer.Register(server)

	h := &harness{
		failer:    f,
		discovery: discovery,
		tokens:    tokens,
		grpc:      server,
		cluster:   &fakeCluster{client: discovery.KubeClient(), dir: opts.dir, objects: map[string][]byte{}},
	}
	if err := h.loadInitialState(opts); err != nil {
		h.stop()
		return nil, err
	}
	listener, err := net.Listen("tcp", opts.addr)
	if err != nil {
		h.stop()
		return nil, err
	}
	h.listener = listener
	go func() {
		if err := server.Serve(listener); err != nil {
			f.Fatalf("serve: %v", err)
		}
	}()
	return h, nil
}

// newDiscovery is Istio's fake discovery server with the ambient index (features.EnableAmbient
// is true: main re-executes with PILOT_ENABLE_AMBIENT=true), over a fake cluster whose
// TokenReview the token issuer answers.
func newDiscovery(f *failer, opts options, tokens *tokenIssuer) *xds.FakeDiscoveryServer {
	meshConfig := mesh.DefaultMeshConfig()
	meshConfig.TrustDomain = opts.trustDomain
	return xds.NewFakeDiscoveryServer(f, xds.FakeOptions{
		DefaultClusterName: cluster.ID(opts.clusterID),
		MeshConfig:         meshConfig,
		// istiod's default debounce (PILOT_DEBOUNCE_AFTER), not the fake's 0: pushes come
		// batched as a real istiod sends them.
		DebounceTime: features.DebounceAfter,
		KubeClientModifier: func(c kubelib.Client) {
			if clientset, ok := c.Kube().(*fake.Clientset); ok {
				tokens.installTokenReview(clientset)
			}
		},
	})
}

// loadInitialState fills the fake cluster: from --config when given (the state replaced, as
// a test restarting istiod "with these objects" means), else from the previous run's state.
func (h *harness) loadInitialState(opts options) error {
	if opts.config == "" {
		return h.cluster.loadState()
	}
	text, err := os.ReadFile(opts.config)
	if err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(opts.dir, stateFile))
	if _, err := h.cluster.apply(text); err != nil {
		return fmt.Errorf("%s: %w", opts.config, err)
	}
	return nil
}

// serverTLS is istiod's secure gRPC TLS (initSecureDiscoveryService): its own certificate for
// istiod's names, client certificates optional (other authenticators may succeed) but, when
// given, verified against the root of the caller's trust domain. gRPC adds ALPN h2.
func serverTLS(authority *ca.IstioCA, opts options) (credentials.TransportCredentials, error) {
	cert, err := servingCert(authority)
	if err != nil {
		return nil, err
	}
	verifier := spiffe.NewPeerCertVerifier()
	root := authority.GetCAKeyCertBundle().GetRootCertPem()
	if err := verifier.AddMappingFromPEM(opts.trustDomain, root); err != nil {
		return nil, err
	}
	return credentials.NewTLS(&tls.Config{
		Certificates:          []tls.Certificate{cert},
		ClientAuth:            tls.VerifyClientCertIfGiven,
		ClientCAs:             verifier.GetGeneralCertPool(),
		VerifyPeerCertificate: verifier.VerifyPeerCert,
		MinVersion:            tls.VersionTLS12,
	}), nil
}

func (h *harness) stop() {
	h.grpc.Stop()
	h.failer.runCleanups()
}
