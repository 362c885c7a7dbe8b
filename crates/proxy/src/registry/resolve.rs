//! Outbound resolution: a service VIP or host picks an endpoint and maps the port; a workload
//! address is that workload; anything else passes through unchanged. Refused istiod resources
//! and conflicted addresses are errors here, so no connection goes around them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rand::RngExt;

use super::{Origin, Port, Registry, ResolveError, Resolved, Service, Workload};

impl Registry {
    /// Resolves an address: a service VIP picks an endpoint and maps the port; a workload
    /// address is that workload; anything else passes through unchanged.
    pub fn resolve_addr(&self, addr: SocketAddr) -> Result<Resolved, ResolveError> {
        let ip = addr.ip().to_canonical();
        if let Some(service) = self.service_where(|s| s.vips.iter().any(|v| v.contains(&ip)))? {
            return self.pick(&service, addr.port());
        }
        self.check_address(ip)?;
        let workload = self.at(ip).next().cloned();
        Ok(Resolved {
            workload,
            address: SocketAddr::new(ip, addr.port()),
            service: None,
        })
    }

    /// Refuses an address a refused workload or a conflict holds.
    fn check_address(&self, ip: IpAddr) -> Result<(), ResolveError> {
        if let Some(conflict) = self.conflicts.iter().find(|c| c.address == ip) {
            return Err(ResolveError::Conflict(conflict.clone()));
        }
        if let Some(w) = self.refusal_at(ip)
            && let Some(reason) = w.refused()
        {
            return Err(ResolveError::Refused {
                target: w.key().to_string(),
                reason,
            });
        }
        Ok(())
    }

    /// Resolves a host name: a service host (or `name.namespace`, Kubernetes-style) picks an
    /// endpoint; a literal IP resolves as an address.
    pub fn resolve_host(&self, host: &str, port: u16) -> Result<Resolved, ResolveError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return self.resolve_addr(SocketAddr::new(ip, port));
        }
        let service = self
            .service_where(|s| {
                s.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
                    || host.eq_ignore_ascii_case(&format!("{}.{}", s.name, s.namespace))
            })?
            .ok_or_else(|| ResolveError::UnknownHost(host.to_string()))?;
        self.pick(&service, port)
    }

    /// The first service matching (the directory's in file order, then istiod's by key),
    /// unless any matching one is refused: a ServiceEntry from a file with the VIP or host of
    /// a service istiod put behind a waypoint must not become a way around it.
    fn service_where(
        &self,
        matches: impl Fn(&Service) -> bool,
    ) -> Result<Option<Arc<Service>>, ResolveError> {
        let refused = |service: &Service| match service.refused {
            Some(reason) => Err(ResolveError::Refused {
                target: service.key.clone(),
                reason,
            }),
            None => Ok(()),
        };
        let mut first: Option<&Arc<Service>> = None;
        for service in self.files.services.iter().filter(|s| matches(s)) {
            refused(service)?;
            first.get_or_insert(service);
        }
        for service in self.istiod.services.values().filter(|s| matches(s)) {
            refused(service)?;
            // istiod's are in no order here: the smallest key is the first.
            if first.is_none_or(|f| f.origin == Origin::Istiod && service.key < f.key) {
                first = Some(service);
            }
        }
        Ok(first.cloned())
    }

    fn pick(&self, service: &Arc<Service>, port: u16) -> Result<Resolved, ResolveError> {
        if let Some(reason) = service.refused {
            return Err(ResolveError::Refused {
                target: service.key.clone(),
                reason,
            });
        }
        let service_port = service
            .ports
            .iter()
            .find(|p| p.number == port)
            .ok_or_else(|| ResolveError::NoSuchPort {
                service: service.key.clone(),
                port,
            })?;
        // Endpoints meshd must not reach (refused, conflicted) are never candidates; if they
        // were all there was, the connection is refused with the first one's reason.
        let mut refused = None;
        let candidates: Vec<(&Arc<Workload>, SocketAddr)> = self
            .endpoints_shared(service)
            .filter(|w| match self.check_address(w.address()) {
                Ok(()) => true,
                Err(e) => {
                    refused.get_or_insert(e);
                    false
                }
            })
            .map(|w| {
                (
                    w,
                    SocketAddr::new(w.address(), target_port(w, service, service_port)),
                )
            })
            .collect();
        if let (true, Some(e)) = (candidates.is_empty(), refused) {
            return Err(e);
        }
        let healthy: Vec<(&Arc<Workload>, SocketAddr)> = {
            let now = Instant::now();
            let unhealthy = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
            candidates
                .iter()
                .filter(|(_, a)| unhealthy.marks.get(a).is_none_or(|until| *until <= now))
                .copied()
                .collect()
        };
        let pool = if healthy.is_empty() {
            &candidates
        } else {
            &healthy
        };
        let total: u64 = pool.iter().map(|(w, _)| u64::from(w.weight().max(1))).sum();
        if total == 0 {
            return Err(ResolveError::NoEndpoints(service.key.clone()));
        }
        let mut ticket = rand::rng().random_range(0..total);
        for (w, address) in pool {
            let weight = u64::from(w.weight().max(1));
            if ticket < weight {
                return Ok(Resolved {
                    workload: Some(Arc::clone(w)),
                    address: *address,
                    service: Some(Arc::clone(service)),
                });
            }
            ticket -= weight;
        }
        Err(ResolveError::NoEndpoints(service.key.clone()))
    }
}

/// The endpoint port: the target istiod resolved for this workload and service, else its port
/// named like the service port, else the service's targetPort, else the service port itself
/// (Istiod's order; a target of 0 from istiod, "not given", falls through).
fn target_port(workload: &Workload, service: &Service, port: &Port) -> u16 {
    workload
        .istiod_target(&service.key, port.number)
        .or_else(|| {
            port.name
                .as_ref()
                .and_then(|n| workload.ports().get(n).copied())
        })
        .or(port.target)
        .unwrap_or(port.number)
}
