//! Cost of a consent decision (`Index::decide`) with 10^3, 10^5 and 10^6 live
//! consents, for random lookups that are allowed and random lookups that are
//! denied (for each of the common reasons).
//!
//! Two measurements run in the same binary, on the same index:
//! - criterion, for the mean of each (size, allowed/denied) pair, cycling
//!   through 2^16 pre-generated random lookups;
//! - a plain harness, run once per size, that times 100k random lookups of
//!   each kind one by one and prints p50/p99/p99.9/max, the ratio of the
//!   medians at 10^6 and 10^3, the time to build the index at 10^6 and the
//!   growth of the resident set while building it.
//!
//! The population is meant to look like a node's: subjects hold 1 to 3
//! records, each naming 1 to 4 of 64 catalogued attributes for 1 or 2 of 12
//! purposes, sent to one of 200 services run by 50 members, from one of 20
//! sources. Most records are given and in force; the rest are withdrawn,
//! refused, invalidated, awaiting a co-grantor, expired or not yet valid, and
//! a few are arrangements for a member or a sector.
//!
//! Sizes are built largest first, so that memory freed by a smaller index
//! cannot hide the growth of the largest. Every loop is bounded; the whole
//! run takes well under a minute per size on two cores.
//!
//! Run: `cargo bench -p mim4-node --bench consent -- --warm-up-time 1 --measurement-time 3`.
//! Under `cargo test` (no `--bench` argument) it runs one small size, once.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use mim4_node::core::consent::index::{Decision, Index, Query};
use mim4_node::core::consent::{
    Action, Actor, Attribute, Audience, ConsentEvent, ConsentId, ConsentRecord, ConsentTerms,
    EventKind, LawfulBasis, Purpose, RecordKind, ScopeItem, Sector, ServiceId, SubjectId,
};
use mim4_node::core::ids::OperatorId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Live records per index, largest first (see the module comment).
const SIZES: [usize; 3] = [1_000_000, 100_000, 1_000];
/// The one size used when the binary runs as a test.
const SIZE_IN_TEST: usize = 1_000;
/// Lookups of each kind timed one by one per size.
const LOOKUPS: usize = 100_000;
/// Lookups of each kind criterion cycles through (a power of two).
const CRITERION_LOOKUPS: usize = 1 << 16;
/// Records folded and upserted per chunk while building, so that the folded
/// records never all sit in memory at once.
const BUILD_CHUNK: usize = 10_000;

const MEMBERS: usize = 50;
const SERVICES_PER_MEMBER: usize = 4;
const SOURCES: usize = 20;
const ATTRIBUTES: usize = 64;
const PURPOSES: usize = 12;
const SECTORS: usize = 5;

const NOW_MS: u64 = 1_800_000_000_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Names shared by every record: services, sources, attributes, purposes, sectors.
struct Pools {
    services: Vec<ServiceId>,
    /// The sector labels of each member, as the trust list carries them.
    member_sectors: Vec<Vec<Sector>>,
    members: Vec<OperatorId>,
    sources: Vec<OperatorId>,
    attributes: Vec<Attribute>,
    purposes: Vec<Purpose>,
    sectors: Vec<Sector>,
    home: OperatorId,
}

impl Pools {
    fn new() -> Self {
        let members: Vec<OperatorId> = (0..MEMBERS)
            .map(|m| OperatorId::new(format!("eu.member{m:02}")).unwrap())
            .collect();
        let sectors: Vec<Sector> = ["education", "health", "employment", "social", "housing"]
            .iter()
            .map(|s| Sector::new(*s).unwrap())
            .collect();
        Self {
            services: (0..MEMBERS * SERVICES_PER_MEMBER)
                .map(|s| {
                    let member = &members[s / SERVICES_PER_MEMBER];
                    ServiceId::new(format!("{member}/service-{}", s % SERVICES_PER_MEMBER)).unwrap()
                })
                .collect(),
            member_sectors: (0..MEMBERS)
                .map(|m| vec![sectors[m % SECTORS].clone()])
                .collect(),
            sources: (0..SOURCES)
                .map(|s| OperatorId::new(format!("eu.source{s:02}")).unwrap())
                .collect(),
            attributes: (0..ATTRIBUTES)
                .map(|a| Attribute::new(format!("register_{}.field_{}", a / 8, a % 8)).unwrap())
                .collect(),
            purposes: (0..PURPOSES)
                .map(|p| Purpose::new(format!("dpv:Purpose{p}")).unwrap())
                .collect(),
            sectors,
            members,
            home: OperatorId::new("fi.helsinki").unwrap(),
        }
    }

    fn member_of(service: usize) -> usize {
        service / SERVICES_PER_MEMBER
    }
}

/// Where a record stands, as events make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Given,
    /// Given, but its window ended before now.
    Expired,
    /// Given, but its window starts after now.
    NotYetValid,
    Withdrawn,
    Refused,
    Invalidated,
    /// One of two guardians has granted.
    AwaitingGrantor,
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Service(u16),
    Member(u8),
    Sector(u8),
}

/// A record in a few bytes, to build it and to aim lookups at it.
#[derive(Clone, Copy, Debug)]
struct Spec {
    subject: u32,
    who: Who,
    source: u8,
    attributes: [u8; 4],
    attribute_count: u8,
    /// Bit set of scope items that are `Verify` rather than `Read`.
    verify_mask: u8,
    purposes: [u8; 2],
    purpose_count: u8,
    status: Status,
}

impl Spec {
    fn attributes(&self) -> &[u8] {
        &self.attributes[..usize::from(self.attribute_count)]
    }

    fn purposes(&self) -> &[u8] {
        &self.purposes[..usize::from(self.purpose_count)]
    }

    fn window(&self) -> (u64, u64) {
        match self.status {
            Status::Expired => (NOW_MS - 400 * DAY_MS, NOW_MS - 35 * DAY_MS),
            Status::NotYetValid => (NOW_MS + 10 * DAY_MS, NOW_MS + 375 * DAY_MS),
            _ => (NOW_MS - 100 * DAY_MS, NOW_MS + 265 * DAY_MS),
        }
    }
}

fn subject(n: u32) -> SubjectId {
    SubjectId::new(format!("fi:s{n:09}")).unwrap()
}

/// `count` record specs: subjects in turn, each with 1 to 3 records.
fn specs(count: usize, rng: &mut StdRng) -> Vec<Spec> {
    let mut specs = Vec::with_capacity(count);
    let mut subject = 0u32;
    while specs.len() < count {
        let held = rng.gen_range(1..=3usize).min(count - specs.len());
        for _ in 0..held {
            specs.push(random_spec(subject, rng));
        }
        subject += 1;
    }
    specs
}

fn random_spec(subject: u32, rng: &mut StdRng) -> Spec {
    let who = match rng.gen_range(0..100u32) {
        0..=2 => Who::Member(rng.gen_range(0..MEMBERS) as u8),
        3..=4 => Who::Sector(rng.gen_range(0..SECTORS) as u8),
        _ => Who::Service(rng.gen_range(0..MEMBERS * SERVICES_PER_MEMBER) as u16),
    };
    let status = match rng.gen_range(0..100u32) {
        0..=79 => Status::Given,
        80..=84 => Status::Withdrawn,
        85..=87 => Status::Expired,
        88..=89 => Status::NotYetValid,
        90..=91 => Status::Refused,
        92 => Status::Invalidated,
        // Arrangements have one grantor, so they cannot await a second.
        _ if matches!(who, Who::Service(_)) => Status::AwaitingGrantor,
        _ => Status::Given,
    };
    let attribute_count = rng.gen_range(1..=4u8);
    let mut attributes = [0u8; 4];
    let mut n = 0;
    while n < usize::from(attribute_count) {
        let candidate = rng.gen_range(0..ATTRIBUTES) as u8;
        if !attributes[..n].contains(&candidate) {
            attributes[n] = candidate;
            n += 1;
        }
    }
    let purpose_count = rng.gen_range(1..=2u8);
    let first = rng.gen_range(0..PURPOSES) as u8;
    let second = (first + rng.gen_range(1..PURPOSES as u8)) % PURPOSES as u8;
    Spec {
        subject,
        who,
        source: rng.gen_range(0..SOURCES) as u8,
        attributes,
        attribute_count,
        // About one scope item in eight allows only verification.
        verify_mask: rng.gen::<u8>() & rng.gen::<u8>() & rng.gen::<u8>(),
        purposes: [first, second],
        purpose_count,
        status,
    }
}

/// Folds record `n` from the events its spec calls for.
fn record(n: usize, spec: &Spec, pools: &Pools) -> ConsentRecord {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&(n as u64).to_be_bytes());
    id[0] = 0xc0;
    let consent_id = ConsentId::from_bytes(id);
    let subject = subject(spec.subject);
    let (kind, audience) = match spec.who {
        Who::Service(s) => (
            RecordKind::Consent,
            Audience::Service(pools.services[usize::from(s)].clone()),
        ),
        Who::Member(m) => (
            RecordKind::Arrangement,
            Audience::Member(pools.members[usize::from(m)].clone()),
        ),
        Who::Sector(k) => (
            RecordKind::Arrangement,
            Audience::Sector(pools.sectors[usize::from(k)].clone()),
        ),
    };
    let grantors = if spec.status == Status::AwaitingGrantor {
        vec![
            SubjectId::new(format!("{subject}.guardian1")).unwrap(),
            SubjectId::new(format!("{subject}.guardian2")).unwrap(),
        ]
    } else {
        vec![subject.clone()]
    };
    let (not_before_ms, not_after_ms) = spec.window();
    let terms = ConsentTerms {
        consent_id,
        kind,
        subject,
        home: pools.home.clone(),
        grantors: grantors.clone(),
        audience,
        source: pools.sources[usize::from(spec.source)].clone(),
        scope: spec
            .attributes()
            .iter()
            .enumerate()
            .map(|(i, &a)| ScopeItem {
                attribute: pools.attributes[usize::from(a)].clone(),
                action: if spec.verify_mask & (1 << i) != 0 {
                    Action::Verify
                } else {
                    Action::Read
                },
            })
            .collect(),
        purposes: spec
            .purposes()
            .iter()
            .map(|&p| pools.purposes[usize::from(p)].clone())
            .collect(),
        purpose_text: "Checking eligibility for the service".to_owned(),
        lawful_basis: LawfulBasis::Consent,
        not_before_ms,
        not_after_ms,
    };
    let asked_at = not_before_ms - DAY_MS;
    let mut record = ConsentRecord::new(ConsentEvent {
        consent_id,
        seq: 0,
        at_ms: asked_at,
        recorder: pools.home.clone(),
        kind: EventKind::Requested(terms),
    })
    .unwrap();
    let actor = |grantor: &SubjectId| Actor {
        person: grantor.clone(),
        for_grantor: grantor.clone(),
        delegations: Vec::new(),
        authentication: "citizen-app".to_owned(),
    };
    let mut kinds = Vec::with_capacity(2);
    match spec.status {
        Status::Given | Status::Expired | Status::NotYetValid => {
            kinds.push(EventKind::Granted(actor(&grantors[0])));
        }
        Status::AwaitingGrantor => kinds.push(EventKind::Granted(actor(&grantors[0]))),
        Status::Withdrawn => {
            kinds.push(EventKind::Granted(actor(&grantors[0])));
            kinds.push(EventKind::Withdrawn(actor(&grantors[0])));
        }
        Status::Refused => kinds.push(EventKind::Refused(actor(&grantors[0]))),
        Status::Invalidated => {
            kinds.push(EventKind::Granted(actor(&grantors[0])));
            kinds.push(EventKind::Invalidated {
                reason: "identity misuse".to_owned(),
            });
        }
    }
    for (step, kind) in (1u64..).zip(kinds) {
        let event = ConsentEvent {
            consent_id,
            seq: record.next_seq(),
            at_ms: asked_at + step * 1000,
            recorder: pools.home.clone(),
            kind,
        };
        record.apply(event).unwrap();
    }
    record
}

/// What the index took to build.
struct Built {
    index: Index,
    /// Time spent in `upsert` alone.
    upsert: Duration,
    /// Time spent folding records from their events.
    fold: Duration,
    /// Resident set growth while building, in bytes (None off Linux).
    rss_growth_bytes: Option<u64>,
}

fn build(specs: &[Spec], pools: &Pools) -> Built {
    let rss_before = rss_bytes();
    let mut index = Index::new();
    let mut upsert = Duration::ZERO;
    let mut fold = Duration::ZERO;
    let mut chunk = Vec::with_capacity(BUILD_CHUNK);
    for (start, specs) in (0..).step_by(BUILD_CHUNK).zip(specs.chunks(BUILD_CHUNK)) {
        let began = Instant::now();
        chunk.extend(
            specs
                .iter()
                .enumerate()
                .map(|(i, spec)| record(start + i, spec, pools)),
        );
        fold += began.elapsed();
        let began = Instant::now();
        for record in &chunk {
            index.upsert(record);
        }
        upsert += began.elapsed();
        chunk.clear();
    }
    drop(chunk);
    assert_eq!(index.len(), specs.len());
    let rss_growth_bytes = rss_before
        .zip(rss_bytes())
        .map(|(before, after)| after.saturating_sub(before));
    Built {
        index,
        upsert,
        fold,
        rss_growth_bytes,
    }
}

/// The resident set size, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A lookup, owning only its subject; the other names are pool indices.
struct Ask {
    subject: SubjectId,
    service: u16,
    source: u8,
    attribute: u8,
    action: Action,
    purpose: u8,
    at_ms: u64,
}

impl Ask {
    fn query<'a>(&'a self, pools: &'a Pools) -> Query<'a> {
        let service = &pools.services[usize::from(self.service)];
        Query {
            subject: &self.subject,
            operator: service.operator(),
            service,
            sectors: &pools.member_sectors[Pools::member_of(usize::from(self.service))],
            source: &pools.sources[usize::from(self.source)],
            attribute: &pools.attributes[usize::from(self.attribute)],
            action: self.action,
            purpose: &pools.purposes[usize::from(self.purpose)],
            at_ms: self.at_ms,
        }
    }
}

/// A service that `spec`'s audience admits.
fn admitted_service(spec: &Spec, rng: &mut StdRng) -> u16 {
    let service = match spec.who {
        Who::Service(s) => usize::from(s),
        Who::Member(m) => {
            usize::from(m) * SERVICES_PER_MEMBER + rng.gen_range(0..SERVICES_PER_MEMBER)
        }
        Who::Sector(k) => {
            let members_with_it = MEMBERS / SECTORS;
            let member = usize::from(k) + SECTORS * rng.gen_range(0..members_with_it);
            member * SERVICES_PER_MEMBER + rng.gen_range(0..SERVICES_PER_MEMBER)
        }
    };
    service as u16
}

/// The lookup `spec`'s record exists for: an admitted service asking for one
/// of its attributes, for one of its purposes, now.
fn matching_ask(spec: &Spec, rng: &mut StdRng) -> Ask {
    let i = rng.gen_range(0..spec.attributes().len());
    let verify_only = spec.verify_mask & (1 << i) != 0;
    Ask {
        subject: subject(spec.subject),
        service: admitted_service(spec, rng),
        source: spec.source,
        attribute: spec.attributes()[i],
        action: if verify_only || rng.gen_bool(0.3) {
            Action::Verify
        } else {
            Action::Read
        },
        purpose: spec.purposes()[rng.gen_range(0..spec.purposes().len())],
        at_ms: NOW_MS,
    }
}

/// A lookup aimed near `spec`'s record that should be denied, for one of
/// the common reasons: unknown subject, another recipient, an attribute or
/// purpose the record lacks, or a record that is not given and in force.
fn denied_ask(spec: &Spec, subjects: u32, rng: &mut StdRng) -> Ask {
    let mut ask = matching_ask(spec, rng);
    match rng.gen_range(0..5u32) {
        0 => {
            ask.subject = SubjectId::new(format!("fi:u{:09}", rng.gen_range(0..subjects))).unwrap()
        }
        1 => ask.service = rng.gen_range(0..MEMBERS * SERVICES_PER_MEMBER) as u16,
        2 => ask.attribute = rng.gen_range(0..ATTRIBUTES) as u8,
        3 => ask.purpose = rng.gen_range(0..PURPOSES) as u8,
        // Left as is: denied when the record is not given and in force.
        _ => {}
    }
    ask
}

/// `count` random lookups that `index` answers as `allowed` says; every
/// candidate is checked, and the number of attempts is bounded.
fn asks(
    count: usize,
    allowed: bool,
    specs: &[Spec],
    index: &Index,
    pools: &Pools,
    rng: &mut StdRng,
) -> Vec<Ask> {
    let subjects = specs.last().map_or(1, |s| s.subject + 1);
    let mut asks = Vec::with_capacity(count);
    let attempts_max = count * 50;
    for _ in 0..attempts_max {
        if asks.len() == count {
            break;
        }
        let spec = &specs[rng.gen_range(0..specs.len())];
        let ask = if allowed {
            if spec.status != Status::Given {
                continue;
            }
            matching_ask(spec, rng)
        } else {
            denied_ask(spec, subjects, rng)
        };
        let is_allowed = matches!(index.decide(&ask.query(pools)), Decision::Allow { .. });
        if is_allowed == allowed {
            asks.push(ask);
        }
    }
    assert_eq!(
        asks.len(),
        count,
        "too few {} lookups found",
        if allowed { "allowed" } else { "denied" }
    );
    asks
}

/// Latencies of one kind of lookup at one size, sorted, in ns.
struct Latencies(Vec<u64>);

impl Latencies {
    fn measure(index: &Index, asks: &[Ask], pools: &Pools) -> Self {
        // One untimed pass over a tenth, to fault in code and the pools.
        for ask in asks.iter().take(asks.len() / 10) {
            black_box(index.decide(&ask.query(pools)));
        }
        let mut ns: Vec<u64> = asks
            .iter()
            .map(|ask| {
                let query = ask.query(pools);
                let began = Instant::now();
                black_box(index.decide(black_box(&query)));
                began.elapsed().as_nanos() as u64
            })
            .collect();
        ns.sort_unstable();
        Self(ns)
    }

    fn quantile(&self, q: f64) -> u64 {
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i]
    }

    fn line(&self) -> String {
        format!(
            "p50 {:>5} ns  p99 {:>5} ns  p99.9 {:>6} ns  max {:>8} ns",
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
            self.0.last().copied().unwrap_or(0)
        )
    }
}

/// The cost of an `Instant::now()` pair, which every timed lookup includes.
fn timer_overhead_ns() -> u64 {
    let mut ns: Vec<u64> = (0..10_000)
        .map(|_| {
            let began = Instant::now();
            black_box(());
            began.elapsed().as_nanos() as u64
        })
        .collect();
    ns.sort_unstable();
    ns[ns.len() / 2]
}

/// The results of one size, for the summary.
struct SizeReport {
    size: usize,
    allowed: Latencies,
    denied: Latencies,
}

fn main() {
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let sizes: &[usize] = if bench_mode { &SIZES } else { &[SIZE_IN_TEST] };
    let lookups = if bench_mode { LOOKUPS } else { 1_000 };
    let criterion_lookups = if bench_mode { CRITERION_LOOKUPS } else { 1_024 };
    let mut criterion = Criterion::default().configure_from_args();
    let pools = Pools::new();
    let mut reports = Vec::new();
    for &size in sizes {
        let mut rng = StdRng::seed_from_u64(0x6d69_6d34 ^ size as u64);
        let specs = specs(size, &mut rng);
        let built = build(&specs, &pools);
        let index = &built.index;
        // Only the first (largest) build starts from a clean heap; later ones
        // reuse what the larger index freed, so their growth means nothing.
        let memory = match built.rss_growth_bytes {
            Some(bytes) if reports.is_empty() => format!(
                "{:.1} MiB ({} bytes per record)",
                bytes as f64 / (1024.0 * 1024.0),
                bytes / size as u64
            ),
            Some(_) => "not measured (reuses memory freed by the larger index)".to_owned(),
            None => "unknown".to_owned(),
        };
        println!(
            "consent index, {size} records ({} subjects): upsert {:.2?}, folding events {:.2?}, resident set +{memory}",
            specs.last().map_or(0, |s| s.subject + 1),
            built.upsert,
            built.fold,
        );

        let mut group = criterion.benchmark_group("consent_decide");
        for allowed in [true, false] {
            let asks = asks(criterion_lookups, allowed, &specs, index, &pools, &mut rng);
            let name = if allowed { "allowed" } else { "denied" };
            group.bench_with_input(BenchmarkId::new(name, size), &asks, |b, asks| {
                let mut i = 0usize;
                b.iter(|| {
                    let ask = &asks[i & (asks.len() - 1)];
                    i = i.wrapping_add(1);
                    index.decide(&ask.query(&pools))
                });
            });
        }
        group.finish();

        let allowed = asks(lookups, true, &specs, index, &pools, &mut rng);
        let denied = asks(lookups, false, &specs, index, &pools, &mut rng);
        reports.push(SizeReport {
            size,
            allowed: Latencies::measure(index, &allowed, &pools),
            denied: Latencies::measure(index, &denied, &pools),
        });
    }
    criterion.final_summary();

    println!();
    println!("decide latency, {lookups} random lookups of each kind per size (each includes one Instant pair, ~{} ns):", timer_overhead_ns());
    for report in &reports {
        println!(
            "  {:>9} records  allowed: {}",
            report.size,
            report.allowed.line()
        );
        println!(
            "  {:>9} records  denied:  {}",
            report.size,
            report.denied.line()
        );
    }
    let smallest = reports.iter().min_by_key(|r| r.size);
    let largest = reports.iter().max_by_key(|r| r.size);
    if let (Some(small), Some(large)) = (smallest, largest) {
        if small.size != large.size {
            let ratio = |l: &Latencies, s: &Latencies| {
                l.quantile(0.5) as f64 / s.quantile(0.5).max(1) as f64
            };
            println!(
                "  p50({}) / p50({}): allowed {:.2}, denied {:.2}",
                large.size,
                small.size,
                ratio(&large.allowed, &small.allowed),
                ratio(&large.denied, &small.denied),
            );
        }
    }
}
