//! Seal/open throughput of session payloads at 1 KiB and 16 KiB.

use airlock_proto::crypto::{NonceSource, SessionKeys};
use airlock_proto::Role;
use aws_lc_rs::rand::SystemRandom;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let data_key = [0x5au8; 64];
    let agent = match SessionKeys::from_data_key(&data_key, Role::Agent) {
        Ok(k) => k,
        Err(e) => panic!("keys: {e}"),
    };
    let client = match SessionKeys::from_data_key(&data_key, Role::Client) {
        Ok(k) => k,
        Err(e) => panic!("keys: {e}"),
    };
    let rng = SystemRandom::new();
    let mut g = c.benchmark_group("session_crypto");
    for size in [1024usize, 16 * 1024] {
        let plain = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));

        let mut counter_sealer = agent.sealer(NonceSource::Counter([0; 12]));
        g.bench_with_input(
            BenchmarkId::new("seal_agent_counter", size),
            &plain,
            |b, p| b.iter(|| counter_sealer.seal(black_box(p))),
        );

        let mut random_sealer = client.sealer(NonceSource::Random(&rng));
        g.bench_with_input(
            BenchmarkId::new("seal_client_random", size),
            &plain,
            |b, p| b.iter(|| random_sealer.seal(black_box(p))),
        );

        let sealed = match agent.sealer(NonceSource::Counter([1; 12])).seal(&plain) {
            Ok(s) => s,
            Err(e) => panic!("seal: {e}"),
        };
        let opener = client.opener();
        g.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| opener.open(black_box(s)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
