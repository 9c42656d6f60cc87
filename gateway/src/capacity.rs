//! The capacity view the prerequisites ask for: each flow's throughput over the last ten
//! seconds (live byte counters the relays feed, sampled every second) and the simultaneous
//! visios (workstations with an open tunnel or routed flow of a flow tagged `visio`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tag that marks a visio flow.
pub const VISIO_TAG: &str = "visio";

/// The window throughput is measured over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Flows followed at most (the configuration's).
const FLOWS: usize = 256;

/// Bytes a flow has moved so far, fed as they go.
#[derive(Debug, Default)]
pub struct FlowBytes {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

/// Every flow's (up, down) bytes at one instant.
type Sample = (Instant, HashMap<String, (u64, u64)>);

#[derive(Default)]
pub struct Capacity {
    flows: Mutex<HashMap<String, Arc<FlowBytes>>>,
    samples: Mutex<VecDeque<Sample>>,
    visios: Mutex<HashMap<IpAddr, usize>>,
}

/// A flow's throughput, bits per second, over [`WINDOW`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Throughput {
    pub flow: String,
    pub up_bps: u64,
    pub down_bps: u64,
}

impl Capacity {
    /// The live counters of `flow` (none beyond [`FLOWS`] flows).
    pub fn flow(&self, flow: &str) -> Option<Arc<FlowBytes>> {
        let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = flows.get(flow) {
            return Some(bytes.clone());
        }
        (flows.len() < FLOWS).then(|| flows.entry(flow.to_string()).or_default().clone())
    }

    /// Takes a sample of every flow's counters (every second, by [`sampler`]).
    pub fn sample(&self) {
        self.sample_at(Instant::now());
    }

    fn sample_at(&self, now: Instant) {
        let snapshot: HashMap<String, (u64, u64)> = self
            .flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(f, b)| {
                (
                    f.clone(),
                    (b.up.load(Ordering::Relaxed), b.down.load(Ordering::Relaxed)),
                )
            })
            .collect();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((now, snapshot));
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Each flow's throughput between the oldest and the newest sample of the window.
    pub fn throughput(&self) -> Vec<Throughput> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let (Some((t0, first)), Some((t1, last))) = (samples.front(), samples.back()) else {
            return Vec::new();
        };
        let seconds = t1.duration_since(*t0).as_secs_f64();
        let mut out: Vec<Throughput> = last
            .iter()
            .map(|(flow, (up, down))| {
                let (up0, down0) = first.get(flow).copied().unwrap_or((0, 0));
                let rate = |now: u64, then: u64| {
                    if seconds > 0.0 {
                        (now.saturating_sub(then) as f64 * 8.0 / seconds) as u64
                    } else {
                        0
                    }
                };
                Throughput {
                    flow: flow.clone(),
                    up_bps: rate(*up, up0),
                    down_bps: rate(*down, down0),
                }
            })
            .collect();
        out.sort_by(|a, b| a.flow.cmp(&b.flow));
        out
    }

    /// A workstation opened (closed) a tunnel or a routed flow of a visio flow.
    pub fn visio_opened(&self, client: IpAddr) {
        *self
            .visios
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(client)
            .or_default() += 1;
    }

    pub fn visio_closed(&self, client: IpAddr) {
        let mut visios = self.visios.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = visios.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                visios.remove(&client);
            }
        }
    }

    /// Workstations in a visio now (each visio counts once, however many connections).
    pub fn visios(&self) -> usize {
        self.visios.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Samples the counters every second until `closing`.
pub async fn sampler(capacity: Arc<Capacity>, closing: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = closing.cancelled() => return,
            _ = tick.tick() => capacity.sample(),
        }
    }
}

/// What the prerequisites ask of the line, against what the site has.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct View {
    pub visios: usize,
    /// 1 Mbit/s symmetric per simultaneous visio.
    pub visio_mbit: u64,
    pub uplink_mbit: Option<u32>,
    pub workstations: Option<u32>,
    /// 2 Mbit/s per workstation in synchronous use.
    pub synchronous_mbit: Option<u64>,
    pub over_uplink: bool,
}

pub fn view(visios: usize, site: &passerelle_config::Site) -> View {
    let visio_mbit = visios as u64;
    View {
        visios,
        visio_mbit,
        uplink_mbit: site.uplink_mbit,
        workstations: site.workstations,
        synchronous_mbit: site.workstations.map(|w| u64::from(w) * 2),
        over_uplink: site.uplink_mbit.is_some_and(|u| visio_mbit > u64::from(u)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visios_count_workstations_once() {
        let c = Capacity::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        c.visio_opened(a);
        c.visio_opened(a);
        c.visio_opened(b);
        assert_eq!(c.visios(), 2);
        c.visio_closed(a);
        assert_eq!(c.visios(), 2);
        c.visio_closed(a);
        c.visio_closed(b);
        assert_eq!(c.visios(), 0);
        let site = passerelle_config::Site {
            uplink_mbit: Some(1),
            workstations: Some(4),
        };
        let v = view(2, &site);
        assert!(v.over_uplink && v.synchronous_mbit == Some(8) && v.visio_mbit == 2);
    }

    #[test]
    fn throughput_is_the_window_difference() {
        let c = Capacity::default();
        let bytes = c.flow("visio").unwrap();
        let t0 = Instant::now();
        c.sample_at(t0);
        bytes.up.fetch_add(1000, Ordering::Relaxed);
        c.sample_at(t0 + Duration::from_secs(2));
        assert_eq!(
            c.throughput(),
            [Throughput {
                flow: "visio".into(),
                up_bps: 4000,
                down_bps: 0
            }]
        );
        // Samples older than the window fall out of it.
        bytes.down.fetch_add(5000, Ordering::Relaxed);
        c.sample_at(t0 + Duration::from_secs(12));
        let t = c.throughput();
        assert_eq!((t[0].up_bps, t[0].down_bps), (0, 4000), "{t:?}");
    }
}
