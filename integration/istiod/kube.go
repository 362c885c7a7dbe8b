package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	kerrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	kubelib "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/controllers"
	"istio.io/istio/pkg/kube/kclient"
)

// stateFile holds every object the harness's fake cluster has, as YAML: the cluster's
// "etcd", so a killed and restarted harness serves the same objects (as a restarted istiod
// finds the cluster as it left it).
const stateFile = "state.yaml"

// kindOps writes one kind of object through the fake Kubernetes client, the way istiod's
// controllers see a cluster (informers on typed clients; the ambient index reads Pods,
// Services, Namespaces and Istio's CRDs from them).
type kindOps struct {
	// group is the API group ("" for core); any version of it is accepted and written as
	// version, the one istiod's informers watch (pkg/config/schema/gvr).
	group, version string
	namespaced     bool
	apply          func(c kubelib.Client, obj runtime.Object) error
	del            func(c kubelib.Client, namespace, name string) error
}

func ops[T controllers.ComparableObject](group, version string, namespaced bool) kindOps {
	return kindOps{
		group: group, version: version, namespaced: namespaced,
		apply: func(c kubelib.Client, obj runtime.Object) error {
			typed, ok := obj.(T)
			if !ok {
				return fmt.Errorf("decoded as %T", obj)
			}
			_, err := kclient.CreateOrUpdate(kclient.NewWriteClient[T](c), typed)
			return err
		},
		del: func(c kubelib.Client, namespace, name string) error {
			return kclient.NewWriteClient[T](c).Delete(name, namespace)
		},
	}
}

// kinds are the objects a test may apply: what the ambient index turns into Workload,
// Service and Authorization resources (waypoints included), plus WorkloadGroup and
// ServiceAccount.
var kinds = map[string]kindOps{
	"Namespace":           ops[*corev1.Namespace]("", "v1", false),
	"ServiceAccount":      ops[*corev1.ServiceAccount]("", "v1", true),
	"Pod":                 ops[*corev1.Pod]("", "v1", true),
	"Service":             ops[*corev1.Service]("", "v1", true),
	"AuthorizationPolicy": ops[*securityv1.AuthorizationPolicy]("security.istio.io", "v1", true),
	"PeerAuthentication":  ops[*securityv1.PeerAuthentication]("security.istio.io", "v1", true),
	"WorkloadEntry":       ops[*networkingv1.WorkloadEntry]("networking.istio.io", "v1", true),
	"WorkloadGroup":       ops[*networkingv1.WorkloadGroup]("networking.istio.io", "v1", true),
	"ServiceEntry":        ops[*networkingv1.ServiceEntry]("networking.istio.io", "v1", true),
	// Waypoints: a Gateway of class istio-waypoint with status addresses is what the ambient
	// index binds workloads labelled istio.io/use-waypoint to.
	"Gateway":      ops[*gatewayv1.Gateway]("gateway.networking.k8s.io", "v1", true),
	"GatewayClass": ops[*gatewayv1.GatewayClass]("gateway.networking.k8s.io", "v1", false),
}

// fakeCluster is the fake cluster's content: the kube client istiod's controllers watch, and the
// objects written to it (persisted to the state dir after each change).
type fakeCluster struct {
	client  kubelib.Client
	dir     string
	mu      sync.Mutex
	objects map[string][]byte // key "Kind/namespace/name" -> the object as JSON
}

// parsed is one document of applied YAML, decoded.
type parsed struct {
	key  string
	ops  kindOps
	obj  runtime.Object
	json []byte
}

// parseYAML decodes every document of a multi-document YAML text, refusing kinds the
// harness does not know and documents that do not decode (error names the document).
func parseYAML(text []byte) ([]parsed, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(text)))
	var out []parsed
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || isOnlyComments(raw) {
			continue
		}
		p, err := parseDoc(raw)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		out = append(out, p)
	}
}

func parseDoc(raw []byte) (parsed, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return parsed{}, err
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return parsed{}, err
	}
	k, ok := kinds[head.Kind]
	if !ok {
		return parsed{}, fmt.Errorf("kind %q is not one the harness applies (%s)", head.Kind, kindNames())
	}
	group, _, _ := strings.Cut(head.APIVersion, "/")
	if !strings.Contains(head.APIVersion, "/") {
		group = ""
	}
	if group != k.group {
		return parsed{}, fmt.Errorf("apiVersion %q is not of group %q for kind %s", head.APIVersion, k.group, head.Kind)
	}
	if head.Metadata.Name == "" {
		return parsed{}, errors.New("metadata.name is required")
	}
	var doc map[string]any
	if err := json.Unmarshal(js, &doc); err != nil {
		return parsed{}, err
	}
	// The version istiod watches; v1beta1/v1alpha3 objects of these kinds have the same schema.
	doc["apiVersion"] = strings.TrimPrefix(k.group+"/"+k.version, "/")
	meta, _ := doc["metadata"].(map[string]any)
	ns := head.Metadata.Namespace
	if k.namespaced && ns == "" {
		ns = "default" // kubectl's default namespace
		meta["namespace"] = ns
	}
	if !k.namespaced {
		ns = ""
		delete(meta, "namespace")
	}
	js, err = json.Marshal(doc)
	if err != nil {
		return parsed{}, err
	}
	obj, _, err := kubelib.IstioCodec.UniversalDeserializer().Decode(js, nil, nil)
	if err != nil {
		return parsed{}, err
	}
	return parsed{key: head.Kind + "/" + ns + "/" + head.Metadata.Name, ops: k, obj: obj, json: js}, nil
}

// apply writes each document (create, or update if it exists) and persists the state. A
// document that does not parse rejects the whole text before anything is written.
func (c *fakeCluster) apply(text []byte) ([]string, error) {
	docs, err := parseYAML(text)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var keys []string
	for _, d := range docs {
		if err := d.ops.apply(c.client, d.obj); err != nil {
			return keys, fmt.Errorf("%s: %w", d.key, err)
		}
		c.objects[d.key] = d.json
		keys = append(keys, d.key)
	}
	return keys, c.save()
}

// delete removes one object; deleting an object that does not exist is an error (NotFound).
func (c *fakeCluster) delete(kind, namespace, name string) error {
	k, ok := kinds[kind]
	if !ok {
		return fmt.Errorf("kind %q is not one the harness applies (%s)", kind, kindNames())
	}
	if k.namespaced && namespace == "" {
		namespace = "default"
	}
	if !k.namespaced {
		namespace = ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	key := kind + "/" + namespace + "/" + name
	if err := k.del(c.client, namespace, name); err != nil {
		if kerrors.IsNotFound(err) {
			delete(c.objects, key)
			_ = c.save()
		}
		return fmt.Errorf("%s: %w", key, err)
	}
	delete(c.objects, key)
	return c.save()
}

// save writes every object as one multi-document YAML file (the state a restart starts from).
func (c *fakeCluster) save() error {
	keys := make([]string, 0, len(c.objects))
	for k := range c.objects {
		keys = append(keys, k)
	}
	// Namespaces first so a state file reads top-down like a manifest.
	slices.SortFunc(keys, func(a, b string) int {
		an, bn := strings.HasPrefix(a, "Namespace/"), strings.HasPrefix(b, "Namespace/")
		if an != bn {
			if an {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	var buf bytes.Buffer
	for _, k := range keys {
		y, err := yaml.JSONToYAML(c.objects[k])
		if err != nil {
			return err
		}
		buf.WriteString("---\n")
		buf.Write(y)
	}
	return writeFileAtomic(filepath.Join(c.dir, stateFile), buf.Bytes(), 0o644)
}

// loadState applies the state file of a previous run, if any.
func (c *fakeCluster) loadState() error {
	text, err := os.ReadFile(filepath.Join(c.dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := c.apply(text); err != nil {
		return fmt.Errorf("%s: %w", stateFile, err)
	}
	return nil
}

func kindNames() string {
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func isOnlyComments(raw []byte) bool {
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}
