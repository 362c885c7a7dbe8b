package main

import (
	"strings"
	"time"

	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/util/sets"
)

// settleTimeout bounds how long an apply or delete waits for istiod to take the change in.
// Past it the reply is sent anyway (an object the ambient index drops, e.g. a CUSTOM policy,
// never shows up).
const settleTimeout = 2 * time.Second

// settler waits until istiod's ambient index holds what was just written (or no longer holds
// what was deleted) and the push it caused is committed, so that a reply to the test means
// "istiod has it": a client connecting after the reply gets it in its first response. The
// fake cluster's informers and the index's collections run asynchronously to the write.
type settler struct {
	discovery *xds.FakeDiscoveryServer
	clusterID string
}

// settle waits for each key ("Kind/namespace/name") the index reports by name.
func (s *settler) settle(keys []string, present bool) {
	deadline := time.Now().Add(settleTimeout)
	for _, key := range keys {
		for !s.indexed(key, present) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The index's handlers asked for a push; wait until the discovery server committed it.
	d := s.discovery.Discovery
	for d.CommittedUpdates.Load() < d.InboundUpdates.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// indexed says whether the index's view of key matches present; kinds it has no lookup for
// by name count as settled.
func (s *settler) indexed(key string, present bool) bool {
	kind, rest, _ := strings.Cut(key, "/")
	index := s.discovery.AmbientIndex
	if index == nil {
		return true
	}
	switch kind {
	case "AuthorizationPolicy":
		ns, name, _ := strings.Cut(rest, "/")
		found := false
		for _, p := range index.Policies(nil) {
			if p.Authorization.GetNamespace() == ns && p.Authorization.GetName() == name {
				found = true
			}
		}
		return found == present
	case "WorkloadEntry":
		// The Address resource's name: <cluster>/networking.istio.io/WorkloadEntry/<ns>/<name>.
		uid := s.clusterID + "/networking.istio.io/WorkloadEntry/" + rest
		infos, _ := index.AddressInformation(sets.New(uid))
		return (len(infos) > 0) == present
	default:
		return true
	}
}
