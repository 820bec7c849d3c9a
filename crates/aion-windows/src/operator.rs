//! The barrier part of the stage: event-time windows per tenant, watermarks per source partition,
//! and which records may be released once windows close.
//!
//! Every event is stored once, in the pane (the gcd of all window sizes and slides) holding its
//! event time; a window is the union of its panes. A pane is dropped, and the acknowledgements of
//! its events released, when the last window covering it has closed.
//!
//! Watermarks are kept per source partition: `max event time seen − allowed lateness`. Whether
//! an event is late for a window depends only on its own partition's history (the log order),
//! so a replay decides it the same way; windows close when the minimum over the active
//! partitions passes their end. An event late for some of its windows counts in the others; one
//! late for all of them is only reported.
//!
//! A partition is idle, and stops holding the watermark back, only when it is caught up — a
//! recent broker query ([`WindowOperator::set_backlog`]) found nothing of it left to read — and no
//! event of it arrived for `idle_timeout`. A partition with records still in the log holds the
//! watermark however long it is silent (a slow broker, a stalled stage), so lateness depends on
//! the log, not on how fast the machine read it. Only events published to an idle partition after
//! a window closed miss it.
//!
//! Replays must see the watermark-setting event first: [`Admission::resume_point`] tells the
//! stage which records a replay may start from (an event at or above its partition's maximum).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::WindowsConfig;

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

/// Where a record came from: its input (topic index), partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub input: u8,
    pub partition: i32,
    pub offset: i64,
}

/// What one event contributes to its windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    Retrieval { ndcg: Option<f64> },
    Answer { fallback: bool, confidence: f64 },
}

/// One event, reduced to what the aggregates read.
#[derive(Debug, Clone)]
pub struct Observation {
    pub tenant: Arc<str>,
    pub ts: Micros,
    pub measure: Measure,
}

/// What happened to an observed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// A replay may start at this record: every later lateness decision is rebuilt from it.
    pub resume_point: bool,
    /// Names of the windows this event missed because it arrived late.
    pub missed: Vec<String>,
    /// Whether the event was stored for at least one window (its ack is held until they close).
    pub kept: bool,
}

/// A stored event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub ts: Micros,
    /// Effective watermark when it arrived: it counts only in windows ending after this.
    pub arrived_at: Micros,
    pub origin: Origin,
    pub measure: Measure,
}

struct Pane<A> {
    rows: Vec<Row>,
    acks: Vec<A>,
    sorted: bool,
}

impl<A> Pane<A> {
    /// Arrival order across partitions differs between runs; this order does not, so float sums
    /// in the SQL come out bit-identical on replay.
    fn sort(&mut self) {
        if !self.sorted {
            self.rows.sort_by_key(|r| (r.ts, r.origin));
            self.sorted = true;
        }
    }
}

struct Spec {
    name: Arc<str>,
    size: Micros,
    slide: Micros,
}

impl Spec {
    /// Ends of this kind's windows that contain time `t`: e with e − size ≤ t < e, e a multiple
    /// of slide.
    fn ends_containing(&self, t: Micros) -> impl Iterator<Item = Micros> + '_ {
        let first = (t.div_euclid(self.slide) + 1) * self.slide;
        let last = self.last_end_containing(t);
        (first..=last).step_by(self.slide as usize)
    }

    fn last_end_containing(&self, t: Micros) -> Micros {
        (t + self.size).div_euclid(self.slide) * self.slide
    }
}

/// A backlog measurement older than this no longer shows a partition caught up: records may have
/// arrived since. The stage measures every second.
pub const BACKLOG_FRESH: Duration = Duration::from_secs(3);

struct Clock {
    max: Option<Micros>,
    last_seen: Instant,
    /// The last backlog measurement: unread records, and when.
    backlog: Option<(i64, Instant)>,
}

impl Clock {
    fn new(now: Instant) -> Self {
        Self {
            max: None,
            last_seen: now,
            backlog: None,
        }
    }

    /// Whether this partition holds the watermark back: an event arrived within `idle_timeout`,
    /// or it is not known to be caught up since its last event.
    fn holds(&self, now: Instant, idle_timeout: Duration) -> bool {
        let caught_up = self.backlog.is_some_and(|(records, at)| {
            records == 0
                && at >= self.last_seen
                && now.saturating_duration_since(at) <= BACKLOG_FRESH
        });
        now.saturating_duration_since(self.last_seen) < idle_timeout || !caught_up
    }

    fn lagging(&self) -> bool {
        self.backlog.is_some_and(|(records, _)| records > 0)
    }
}

/// One closed window and the rows it aggregates.
#[derive(Debug)]
pub struct ClosedWindow {
    pub tenant: Arc<str>,
    pub window: Arc<str>,
    pub start: Micros,
    pub end: Micros,
    pub(crate) rows: Vec<Row>,
}

/// The windows of one tenant that end at the same instant: closed, published and stored together.
#[derive(Debug)]
pub struct ClosedGroup {
    pub tenant: Arc<str>,
    pub end: Micros,
    pub windows: Vec<ClosedWindow>,
}

/// A pane no open window needs any more: its events, final, for the history table.
#[derive(Debug)]
pub struct ReleasedPane {
    pub tenant: Arc<str>,
    pub start: Micros,
    pub(crate) rows: Vec<Row>,
}

/// Everything a watermark advance closed, and the acks to complete once its results are durable.
#[derive(Debug)]
pub struct Closing<A> {
    pub groups: Vec<ClosedGroup>,
    pub released: Vec<ReleasedPane>,
    pub release: Vec<A>,
}

/// Per-tenant event-time windows over panes. `A` is the acknowledgement a stored event holds.
pub struct WindowOperator<A> {
    specs: Vec<Spec>,
    pane: Micros,
    lateness: Micros,
    idle_timeout: Duration,
    clocks: HashMap<(u8, i32), Clock>,
    panes: HashMap<Arc<str>, BTreeMap<Micros, Pane<A>>>,
    /// Window ends still to close, in end order, with their tenant, and when their first event
    /// arrived.
    pending: BTreeMap<(Micros, Arc<str>), Instant>,
    /// Every window ending at or before this has closed.
    closed_through: Micros,
    stored_rows: usize,
}

fn micros(d: Duration) -> Micros {
    d.as_micros().try_into().unwrap_or(Micros::MAX)
}

impl<A> WindowOperator<A> {
    pub fn new(config: &WindowsConfig) -> Self {
        Self {
            specs: config
                .windows
                .iter()
                .map(|w| Spec {
                    name: Arc::from(w.name.as_str()),
                    size: micros(w.size),
                    slide: micros(w.slide()),
                })
                .collect(),
            pane: micros(config.pane()),
            lateness: micros(config.watermark.allowed_lateness),
            idle_timeout: config.watermark.idle_timeout,
            clocks: HashMap::new(),
            panes: HashMap::new(),
            pending: BTreeMap::new(),
            closed_through: Micros::MIN,
            stored_rows: 0,
        }
    }

    /// Declares a source partition, so that the watermark waits for it until it has delivered
    /// or is idle.
    pub fn add_partition(&mut self, input: u8, partition: i32, now: Instant) {
        self.clocks
            .entry((input, partition))
            .or_insert_with(|| Clock::new(now));
    }

    /// Records how many records of a partition were still unread in the log at `measured`.
    pub fn set_backlog(&mut self, input: u8, partition: i32, records: i64, measured: Instant) {
        self.clocks
            .entry((input, partition))
            .or_insert_with(|| Clock::new(measured))
            .backlog = Some((records, measured));
    }

    fn clock(&mut self, input: u8, partition: i32, now: Instant) -> &mut Clock {
        let clock = self
            .clocks
            .entry((input, partition))
            .or_insert_with(|| Clock::new(now));
        clock.last_seen = now;
        clock
    }

    /// A record that carries no event (it was dead-lettered): it keeps its partition active, and
    /// a replay may start at it only while the partition has shown no event yet.
    pub fn observe_unusable(&mut self, origin: Origin, now: Instant) -> bool {
        self.clock(origin.input, origin.partition, now)
            .max
            .is_none()
    }

    /// Admits one event; the ack made by `ack` (only when the event counts in a window) is held
    /// until every window it counts in has closed.
    pub fn observe(
        &mut self,
        origin: Origin,
        obs: &Observation,
        ack: impl FnOnce() -> A,
        now: Instant,
    ) -> Admission {
        let lateness = self.lateness;
        let clock = self.clock(origin.input, origin.partition, now);
        let previous = clock.max;
        clock.max = Some(previous.map_or(obs.ts, |m| m.max(obs.ts)));
        let own = previous.map_or(Micros::MIN, |m| m.saturating_sub(lateness));
        // Windows already closed are missed as well (only possible after an idle partition).
        let arrived_at = own.max(self.closed_through);
        let mut missed = Vec::new();
        let mut kept = false;
        for spec in &self.specs {
            kept |= spec.last_end_containing(obs.ts) > arrived_at;
            if spec
                .ends_containing(obs.ts)
                .next()
                .is_some_and(|e| e <= arrived_at)
            {
                missed.push(spec.name.to_string());
            }
        }
        if kept {
            self.store(origin, obs, arrived_at, ack(), now);
        }
        Admission {
            resume_point: previous.is_none_or(|m| obs.ts >= m),
            missed,
            kept,
        }
    }

    fn store(
        &mut self,
        origin: Origin,
        obs: &Observation,
        arrived_at: Micros,
        ack: A,
        now: Instant,
    ) {
        let start = obs.ts.div_euclid(self.pane) * self.pane;
        let panes = self.panes.entry(obs.tenant.clone()).or_default();
        let pane = panes.entry(start).or_insert_with(|| {
            // Windows are unions of whole panes: those containing the pane's start contain all of
            // it. Ends already closed are never scheduled again (that would re-publish them).
            for spec in &self.specs {
                for end in spec.ends_containing(start) {
                    if end > self.closed_through {
                        self.pending.entry((end, obs.tenant.clone())).or_insert(now);
                    }
                }
            }
            Pane {
                rows: Vec::new(),
                acks: Vec::new(),
                sorted: true,
            }
        });
        pane.sorted &= pane
            .rows
            .last()
            .is_none_or(|r| (r.ts, r.origin) <= (obs.ts, origin));
        pane.rows.push(Row {
            ts: obs.ts,
            arrived_at,
            origin,
            measure: obs.measure,
        });
        pane.acks.push(ack);
        self.stored_rows += 1;
    }

    /// The watermark windows close on: the minimum over the partitions that hold it (all of
    /// them, when every partition is idle), or `None` while one that holds has shown no event.
    pub fn watermark(&self, now: Instant) -> Option<Micros> {
        self.watermark_over(now, |_| true)
    }

    /// [`Self::watermark`] over the partitions `counted` selects.
    fn watermark_over(&self, now: Instant, counted: impl Fn(&Clock) -> bool) -> Option<Micros> {
        let clocks = || self.clocks.values().filter(|c| counted(c));
        let mark = |c: &Clock| c.max.map(|m| m.saturating_sub(self.lateness));
        if clocks().any(|c| c.holds(now, self.idle_timeout)) {
            clocks()
                .filter(|c| c.holds(now, self.idle_timeout))
                .map(mark)
                .try_fold(Micros::MAX, |acc, m| m.map(|m| acc.min(m)))
        } else {
            clocks().filter_map(mark).min()
        }
    }

    /// Window ends that would close now if partitions with unread records did not hold the
    /// watermark: what waits on a lagging input.
    pub fn held_by_lag(&self, now: Instant) -> usize {
        if !self.clocks.values().any(Clock::lagging) {
            return 0;
        }
        let Some(without) = self.watermark_over(now, |c| !c.lagging()) else {
            return 0;
        };
        let from = self
            .watermark(now)
            .unwrap_or(Micros::MIN)
            .max(self.closed_through);
        self.pending
            .keys()
            .skip_while(|(end, _)| *end <= from)
            .take_while(|(end, _)| *end <= without)
            .count()
    }

    /// How long ago the first event of the next window to close arrived.
    pub fn oldest_open(&self, now: Instant) -> Option<Duration> {
        self.pending
            .first_key_value()
            .map(|(_, opened)| now.saturating_duration_since(*opened))
    }

    /// Closes every window the watermark has passed. The caller publishes the groups, makes them
    /// durable, and only then drops `release`.
    pub fn close(&mut self, now: Instant) -> Closing<A> {
        let mut closing = Closing {
            groups: Vec::new(),
            released: Vec::new(),
            release: Vec::new(),
        };
        let Some(watermark) = self.watermark(now) else {
            return closing;
        };
        if watermark <= self.closed_through {
            return closing;
        }
        self.closed_through = watermark;
        while let Some(((end, tenant), _)) = self.pending.first_key_value() {
            if *end > watermark {
                break;
            }
            let (end, tenant) = (*end, tenant.clone());
            self.pending.pop_first();
            let group = self.close_group(&tenant, end);
            if !group.windows.is_empty() {
                closing.groups.push(group);
            }
            // Panes no later window needs: their events are fully counted.
            let last_end = |start: Micros| {
                self.specs
                    .iter()
                    .map(|s| s.last_end_containing(start))
                    .max()
                    .unwrap_or(start)
            };
            if let Some(panes) = self.panes.get_mut(&tenant) {
                while let Some((&start, _)) = panes.first_key_value() {
                    if last_end(start) > end {
                        break;
                    }
                    if let Some((start, mut pane)) = panes.pop_first() {
                        self.stored_rows -= pane.rows.len();
                        pane.sort();
                        closing.release.append(&mut pane.acks);
                        closing.released.push(ReleasedPane {
                            tenant: tenant.clone(),
                            start,
                            rows: pane.rows,
                        });
                    }
                }
                if panes.is_empty() {
                    self.panes.remove(&tenant);
                }
            }
        }
        closing
    }

    fn close_group(&mut self, tenant: &Arc<str>, end: Micros) -> ClosedGroup {
        let mut windows = Vec::new();
        let Some(panes) = self.panes.get_mut(tenant) else {
            return ClosedGroup {
                tenant: tenant.clone(),
                end,
                windows,
            };
        };
        for spec in &self.specs {
            if end.rem_euclid(spec.slide) != 0 {
                continue;
            }
            let start = end - spec.size;
            let mut rows = Vec::new();
            for (_, pane) in panes.range_mut(start..end) {
                pane.sort();
                rows.extend(pane.rows.iter().filter(|r| r.arrived_at < end).copied());
            }
            if !rows.is_empty() {
                windows.push(ClosedWindow {
                    tenant: tenant.clone(),
                    window: spec.name.clone(),
                    start,
                    end,
                    rows,
                });
            }
        }
        ClosedGroup {
            tenant: tenant.clone(),
            end,
            windows,
        }
    }

    /// Events held in open panes: what memory grows with.
    pub fn stored_rows(&self) -> usize {
        self.stored_rows
    }

    /// Window ends still to close.
    pub fn open_windows(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests;
