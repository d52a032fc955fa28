// Shared by the peer-library programs `ipc bench` builds and runs: the standard workloads (W1 ping-pong of 64 B,
// 1,000 warm-up and 20,000 timed round trips; W2 1,000,000 messages of 64 B one way, then "done"), pinning from
// the environment, and the RESULT lines `ipc bench` reads. Counts come from BASELINE_W1_WARMUP, BASELINE_W1_ITERS
// and BASELINE_W2_COUNT; the child pins itself to BASELINE_CHILD_CPU (the parent inherits the caller's CPU).
#pragma once
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <algorithm>
#include <vector>

static inline uint64_t now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline long env_count(const char *name, long fallback) {
    const char *value = getenv(name);
    return value && *value ? atol(value) : fallback;
}

static inline void pin_child() {
    const char *cpu = getenv("BASELINE_CHILD_CPU");
    if (!cpu || !*cpu) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(atoi(cpu), &set);
    sched_setaffinity(0, sizeof set, &set);
}

struct Counts {
    long w1_warmup = env_count("BASELINE_W1_WARMUP", 1000);
    long w1_iters = env_count("BASELINE_W1_ITERS", 20000);
    long w2_count = env_count("BASELINE_W2_COUNT", 1000000);
};

static inline void report_w1(std::vector<uint64_t> &samples) {
    std::sort(samples.begin(), samples.end());
    double p50 = samples[samples.size() / 2] / 1000.0;
    double p99 = samples[samples.size() * 99 / 100] / 1000.0;
    printf("RESULT W1_p50 %.3f us\nRESULT W1_p99 %.3f us\nRESULT W1_max %.3f us\n", p50, p99, samples.back() / 1000.0);
}

static inline void report_w2(long count, uint64_t start) {
    double seconds = (now_ns() - start) / 1e9;
    printf("RESULT W2 %.4f Mmsg/s\n", count / seconds / 1e6);
}

[[noreturn]] static inline void fail(const char *what) {
    fprintf(stderr, "peer benchmark failed: %s\n", what);
    exit(1);
}
