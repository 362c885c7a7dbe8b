package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"istio.io/istio/security/pkg/pki/ca"
	"istio.io/istio/security/pkg/pki/util"
)

// The root's files in the state dir. istiod's plug-in CA reads the same names from its
// `cacerts` secret (security/pkg/pki/ca/ca.go), which is how an operator gives istiod a root
// that outlives it; the harness does the same so a restarted harness keeps its root.
const (
	caCertFile   = "ca-cert.pem"
	caKeyFile    = "ca-key.pem"
	rootCertFile = "root-cert.pem"
)

const (
	// rootTTL: istiod's self-signed root lives 10 years (CITADEL_SELF_SIGNED_CA_CERT_TTL).
	rootTTL = 10 * 365 * 24 * time.Hour
	// defaultWorkloadCertTTL: istiod's DEFAULT_WORKLOAD_CERT_TTL (24 h), used when a CSR
	// asks for no validity.
	defaultWorkloadCertTTL = 24 * time.Hour
	// maxWorkloadCertTTL: istiod's MAX_WORKLOAD_CERT_TTL (90 days).
	maxWorkloadCertTTL = 90 * 24 * time.Hour
	// servingCertTTL: istiod's own DNS certificate (its "istiod" secret) lives 1 day by
	// default; the harness never runs that long.
	servingCertTTL = 24 * time.Hour
)

// istiodHostnames are the names ztunnel and pilot-agent verify istiod's certificate against
// (XDS_ADDRESS / CA_ADDRESS defaults and istioctl's `hosts` file).
var istiodHostnames = []string{
	"istiod.istio-system.svc",
	"istiod.istio-system.svc.cluster.local",
	"istiod.istio-system",
	"istiod",
}

// loadOrCreateCA returns Istio's CA built from the root in dir, creating a self-signed
// root there first when there is none. org names the root's organisation (istiod uses the
// trust domain).
func loadOrCreateCA(dir, org string) (*ca.IstioCA, error) {
	certPath := filepath.Join(dir, caCertFile)
	keyPath := filepath.Join(dir, caKeyFile)
	rootPath := filepath.Join(dir, rootCertFile)
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := createRoot(certPath, keyPath, org); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	// root-cert.pem is what clients trust; it is the self-signed CA certificate itself.
	cert, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(rootPath, cert, 0o644); err != nil {
		return nil, err
	}
	opts, err := ca.NewPluggedCertIstioCAOptions(ca.SigningCAFileBundle{
		RootCertFile:    rootPath,
		SigningCertFile: certPath,
		SigningKeyFile:  keyPath,
	}, defaultWorkloadCertTTL, maxWorkloadCertTTL, 2048)
	if err != nil {
		return nil, fmt.Errorf("load the root from %s: %w", dir, err)
	}
	return ca.NewIstioCA(opts)
}

// createRoot writes a self-signed root as istiod's self-signed CA makes it
// (NewSelfSignedIstioCAOptions: RSA 2048, CA, dual use).
func createRoot(certPath, keyPath, org string) error {
	certPEM, keyPEM, err := util.GenCertKeyFromOptions(util.CertOptions{
		TTL:          rootTTL,
		Org:          org,
		IsCA:         true,
		IsSelfSigned: true,
		RSAKeySize:   2048,
		IsDualUse:    true,
	})
	if err != nil {
		return fmt.Errorf("generate the root: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return err
	}
	// The key last: its presence is what says the root is complete.
	return writeFileAtomic(keyPath, keyPEM, 0o600)
}

// servingCert is istiod's own certificate for port 15012, signed by the root for the names
// of istiodHostnames (istiod does the same with GenKeyCert, pilot/pkg/bootstrap/certcontroller.go).
func servingCert(authority *ca.IstioCA) (tls.Certificate, error) {
	chain, key, err := authority.GenKeyCert(istiodHostnames, servingCertTTL, false)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign istiod's serving certificate: %w", err)
	}
	return tls.X509KeyPair(chain, key)
}

// writeFileAtomic writes through a temporary file and a rename so a killed harness never
// leaves half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
