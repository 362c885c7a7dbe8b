package main

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// Files of the token issuer in the state dir: the signing key (so tokens minted before a
// restart still verify after it, as a cluster's tokens outlive an istiod restart) and the
// revoked token ids.
const (
	tokenKeyFile     = "token-signing-key.pem"
	revokedTokenFile = "revoked-tokens.json"
)

// tokenIssuer stands in for the Kubernetes API server's service-account token issuer
// (TokenRequest) and its TokenReview: it mints JWTs shaped like a projected service-account
// token and answers TokenReview for the ones it minted, unexpired and not revoked.
type tokenIssuer struct {
	key     *rsa.PrivateKey
	dir     string
	mu      sync.Mutex
	revoked map[string]bool
}

// tokenClaims are the claims a projected service-account token carries.
type tokenClaims struct {
	Audience  []string        `json:"aud"`
	Expiry    int64           `json:"exp"`
	IssuedAt  int64           `json:"iat"`
	Issuer    string          `json:"iss"`
	ID        string          `json:"jti"`
	Subject   string          `json:"sub"`
	NotBefore int64           `json:"nbf"`
	Kube      kubernetesClaim `json:"kubernetes.io"`
}

type kubernetesClaim struct {
	Namespace      string  `json:"namespace"`
	ServiceAccount nameRef `json:"serviceaccount"`
}

type nameRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// kubeIssuer is the issuer of a cluster's service-account tokens (kube-apiserver's
// --service-account-issuer default).
const kubeIssuer = "https://kubernetes.default.svc.cluster.local"

func newTokenIssuer(dir string) (*tokenIssuer, error) {
	key, err := loadOrCreateTokenKey(filepath.Join(dir, tokenKeyFile))
	if err != nil {
		return nil, err
	}
	t := &tokenIssuer{key: key, dir: dir, revoked: map[string]bool{}}
	data, err := os.ReadFile(filepath.Join(dir, revokedTokenFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		var ids []string
		if err := json.Unmarshal(data, &ids); err != nil {
			return nil, fmt.Errorf("%s: %w", revokedTokenFile, err)
		}
		for _, id := range ids {
			t.revoked[id] = true
		}
	}
	return t, nil
}

func loadOrCreateTokenKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		der := x509.MarshalPKCS1PrivateKey(key)
		block := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})
		return key, writeFileAtomic(path, block, 0o600)
	}
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	return x509.ParsePKCS1PrivateKey(block.Bytes)
}

// mint returns a signed token for namespace/serviceAccount with the given audiences,
// valid for ttl from now.
func (t *tokenIssuer) mint(namespace, serviceAccount string, audiences []string, ttl time.Duration) (string, error) {
	if namespace == "" || serviceAccount == "" {
		return "", errors.New("namespace and serviceAccount are required")
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	now := time.Now()
	claims := tokenClaims{
		Audience:  audiences,
		Expiry:    now.Add(ttl).Unix(),
		IssuedAt:  now.Unix(),
		NotBefore: now.Unix(),
		Issuer:    kubeIssuer,
		ID:        fmt.Sprintf("%x", id),
		Subject:   "system:serviceaccount:" + namespace + ":" + serviceAccount,
		Kube: kubernetesClaim{
			Namespace:      namespace,
			ServiceAccount: nameRef{Name: serviceAccount, UID: fmt.Sprintf("%x", id[:8])},
		},
	}
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": "harness"})
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, t.key, crypto.SHA256, digest[:])
	if err != nil {
		return "", err
	}
	return signed + "." + enc.EncodeToString(sig), nil
}

// verify checks a token's signature, time window and revocation; its claims when valid.
func (t *tokenIssuer) verify(token string) (*tokenClaims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWT")
	}
	enc := base64.RawURLEncoding
	sig, err := enc.DecodeString(parts[2])
	if err != nil {
		return nil, errors.New("bad signature encoding")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&t.key.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
		return nil, errors.New("signature does not verify")
	}
	payload, err := enc.DecodeString(parts[1])
	if err != nil {
		return nil, errors.New("bad payload encoding")
	}
	var claims tokenClaims
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, errors.New("bad claims")
	}
	now := time.Now().Unix()
	if now >= claims.Expiry || now < claims.NotBefore {
		return nil, errors.New("token has expired")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.revoked[claims.ID] {
		return nil, errors.New("token has been invalidated")
	}
	return &claims, nil
}

// revoke invalidates a token the harness minted (as deleting its bound object would).
func (t *tokenIssuer) revoke(token string) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return errors.New("bad payload encoding")
	}
	var claims tokenClaims
	if err := json.Unmarshal(payload, &claims); err != nil || claims.ID == "" {
		return errors.New("not a token of this harness")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.revoked[claims.ID] = true
	ids := make([]string, 0, len(t.revoked))
	for id := range t.revoked {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	data, _ := json.Marshal(ids)
	return writeFileAtomic(filepath.Join(t.dir, revokedTokenFile), data, 0o644)
}

// review answers a TokenReview as kube-apiserver does: authenticated only for a valid token
// one of whose audiences the review asks for; the user is the service account, in the
// groups istio's tokenreview package checks (security/pkg/k8s/tokenreview/k8sauthn.go).
func (t *tokenIssuer) review(spec authenticationv1.TokenReviewSpec) authenticationv1.TokenReviewStatus {
	claims, err := t.verify(spec.Token)
	if err != nil {
		return authenticationv1.TokenReviewStatus{Error: "[invalid bearer token, " + err.Error() + "]"}
	}
	// An empty audience list in the review means the API server's own audiences, which
	// are the issuer's; istiod always asks for TOKEN_AUDIENCES (istio-ca).
	wanted := spec.Audiences
	if len(wanted) == 0 {
		wanted = []string{kubeIssuer}
	}
	var matched []string
	for _, aud := range claims.Audience {
		if slices.Contains(wanted, aud) {
			matched = append(matched, aud)
		}
	}
	if len(matched) == 0 {
		return authenticationv1.TokenReviewStatus{Error: "[invalid bearer token, token audiences " +
			fmt.Sprint(claims.Audience) + " is invalid for the target audiences " + fmt.Sprint(wanted) + "]"}
	}
	ns, sa := claims.Kube.Namespace, claims.Kube.ServiceAccount.Name
	return authenticationv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     matched,
		User: authenticationv1.UserInfo{
			Username: "system:serviceaccount:" + ns + ":" + sa,
			UID:      claims.Kube.ServiceAccount.UID,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		},
	}
}

// installTokenReview makes the fake clientset answer TokenReview creation with review.
func (t *tokenIssuer) installTokenReview(client *fake.Clientset) {
	client.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		create, ok := action.(k8stesting.CreateAction)
		if !ok {
			return false, nil, nil
		}
		in, ok := create.GetObject().(*authenticationv1.TokenReview)
		if !ok {
			return false, nil, nil
		}
		out := in.DeepCopy()
		out.Status = t.review(in.Spec)
		return true, out, nil
	})
}
