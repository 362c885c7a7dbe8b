package main

import (
	"time"

	"istio.io/istio/pilot/pkg/autoregistration"
	"istio.io/istio/pilot/pkg/config/kube/crdclient"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/config/schema/collection"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/gvr"
	"istio.io/istio/pkg/keepalive"
	kubelib "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/kclient/clienttest"
)

// autoregisterTimeout bounds the wait for the config store's informers to sync at start.
const autoregisterTimeout = 30 * time.Second

// useClusterForAutoregistration gives the discovery server istiod's WorkloadEntry
// auto-registration over the fake cluster itself. The fake discovery server's own controller
// works on an in-memory store the ambient index never reads; istiod's (bootstrap's
// configcontroller.go) works on the CRD-backed store, so a WorkloadGroup applied by a test is
// found when a VM connects with AUTO_REGISTER_GROUP, and the WorkloadEntry istiod creates for
// it is pushed like any other.
func useClusterForAutoregistration(f *failer, discovery *xds.FakeDiscoveryServer, client kubelib.Client, stop chan struct{}) {
	// The fake cluster registers only the CRDs the fake discovery server asked for, which do
	// not include WorkloadGroup.
	clienttest.MakeCRD(f, client, gvr.WorkloadGroup)
	store := crdclient.NewForSchemas(client, crdclient.Option{
		DomainSuffix: "cluster.local",
		Identifier:   "autoregistration",
	}, collection.SchemasFor(collections.WorkloadGroup, collections.WorkloadEntry))
	// Informers made after the kube client started are started by another RunAndWait (the
	// fake discovery server does the same after building its controllers); without it the
	// store's WorkloadEntry informer never runs and a WorkloadGroup may never be seen.
	client.RunAndWait(stop)
	go store.Run(stop)
	if !kubelib.WaitForCacheSync("autoregistration", stopAfter(stop, autoregisterTimeout), store.HasSynced) {
		f.Fatalf("the WorkloadGroup/WorkloadEntry store did not sync within %v", autoregisterTimeout)
	}
	// keepalive.Infinity as the fake uses: no max connection age to spread reconnects over.
	controller := autoregistration.NewController(store, "harness", keepalive.Infinity)
	go controller.Run(stop)
	discovery.Discovery.WorkloadEntryController = controller
}

// stopAfter is a channel closed when stop is, or after d.
func stopAfter(stop <-chan struct{}, d time.Duration) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		select {
		case <-stop:
		case <-time.After(d):
		}
		close(out)
	}()
	return out
}
