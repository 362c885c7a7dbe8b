package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	v3 "istio.io/istio/pilot/pkg/xds/v3"
)

// The two types ztunnel subscribes to (and meshd with it): their watch state is what the
// "clients" operation reports.
var watchedTypes = []string{
	v3.AddressType,
	v3.WorkloadAuthorizationType,
}

// defaultTokenTTL: istioctl's --tokenDuration default for a VM's istio-token (3600 s).
const defaultTokenTTL = time.Hour

// request is one line of the control channel on stdin.
type request struct {
	ID             int64    `json:"id"`
	Op             string   `json:"op"`
	YAML           string   `json:"yaml,omitempty"`
	Kind           string   `json:"kind,omitempty"`
	Namespace      string   `json:"namespace,omitempty"`
	Name           string   `json:"name,omitempty"`
	ServiceAccount string   `json:"serviceAccount,omitempty"`
	Audiences      []string `json:"audiences,omitempty"`
	TTLSeconds     int64    `json:"ttlSeconds,omitempty"`
	Token          string   `json:"token,omitempty"`
}

// reply is one line on the reply stream: ok, or the error; plus the operation's result.
type reply struct {
	ID      int64        `json:"id"`
	OK      bool         `json:"ok"`
	Error   string       `json:"error,omitempty"`
	Applied []string     `json:"applied,omitempty"`
	Token   string       `json:"token,omitempty"`
	Clients []clientView `json:"clients,omitempty"`
}

// clientView is a connected proxy as istiod tracks it.
type clientView struct {
	ConnectionID string               `json:"connectionId"`
	Node         string               `json:"node"`
	Type         string               `json:"type"`
	Namespace    string               `json:"namespace"`
	Identity     string               `json:"identity,omitempty"`
	Watched      map[string]watchView `json:"watched"`
}

type watchView struct {
	NonceSent  string `json:"nonceSent"`
	NonceAcked string `json:"nonceAcked"`
	LastError  string `json:"lastError,omitempty"`
}

// serveControl reads requests until in ends (the test process went away: the harness then
// stops, so no harness outlives its test) and writes one reply line per request.
func (h *harness) serveControl(in io.Reader, out io.Writer) {
	var mu sync.Mutex
	enc := json.NewEncoder(out)
	scanner := bufio.NewScanner(in)
	// A request carries YAML of any size a test writes.
	scanner.Buffer(make([]byte, 0, 64*1024), 64<<20)
	for scanner.Scan() {
		var req request
		var rep reply
		if err := json.Unmarshal(scanner.Bytes(), &req); err != nil {
			rep = reply{Error: "bad request: " + err.Error()}
		} else {
			rep = h.handle(req)
			rep.ID = req.ID
		}
		mu.Lock()
		_ = enc.Encode(rep)
		mu.Unlock()
	}
}

func (h *harness) handle(req request) reply {
	var rep reply
	var err error
	switch req.Op {
	case "ping":
	case "apply":
		rep.Applied, err = h.cluster.apply([]byte(req.YAML))
	case "delete":
		err = h.cluster.delete(req.Kind, req.Namespace, req.Name)
	case "mint":
		ttl := defaultTokenTTL
		if req.TTLSeconds > 0 {
			ttl = time.Duration(req.TTLSeconds) * time.Second
		}
		audiences := req.Audiences
		if len(audiences) == 0 {
			audiences = []string{"istio-ca"}
		}
		rep.Token, err = h.tokens.mint(req.Namespace, req.ServiceAccount, audiences, ttl)
	case "revoke":
		err = h.tokens.revoke(req.Token)
	case "clients":
		rep.Clients = h.clients()
	default:
		err = errors.New("unknown op " + fmt.Sprintf("%q", req.Op))
	}
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	rep.OK = true
	return rep
}

// clients reports every initialised connection with the ACK state of the watched types.
func (h *harness) clients() []clientView {
	var out []clientView
	for _, con := range h.discovery.Discovery.SortedClients() {
		proxy := con.Proxy()
		view := clientView{
			ConnectionID: con.ID(),
			Node:         proxy.ID,
			Type:         string(proxy.Type),
			Namespace:    proxy.ConfigNamespace,
			Watched:      map[string]watchView{},
		}
		if proxy.VerifiedIdentity != nil {
			view.Identity = proxy.VerifiedIdentity.String()
		}
		for _, typeURL := range watchedTypes {
			if w := proxy.GetWatchedResource(typeURL); w != nil {
				view.Watched[typeURL] = watchView{
					NonceSent:  w.NonceSent,
					NonceAcked: w.NonceAcked,
					LastError:  w.LastError,
				}
			}
		}
		out = append(out, view)
	}
	return out
}
