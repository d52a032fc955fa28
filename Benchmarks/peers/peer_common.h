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

// The workloads over a library's send and receive: `send(bytes, count)` and `receive(buffer, capacity)`, which
// returns the received size. The parent measures; the child echoes (W1) or counts and checks (W2).
template <class Send, class Receive>
static void parent_workloads(const char *workload, const Counts &counts, Send send, Receive receive) {
    char message[64];
    memset(message, 1, sizeof message);
    if (strcmp(workload, "w1") == 0) {
        std::vector<uint64_t> samples;
        samples.reserve(counts.w1_iters);
        for (long i = 0; i < counts.w1_warmup + counts.w1_iters; i++) {
            message[0] = (char)i;
            uint64_t t0 = now_ns();
            send(message, 64);
            if (receive(message, sizeof message) != 64 || message[0] != (char)i) fail("W1: bad echo");
            if (i >= counts.w1_warmup) samples.push_back(now_ns() - t0);
        }
        report_w1(samples);
    } else {
        uint64_t start = now_ns();
        for (long i = 0; i < counts.w2_count; i++) {
            message[0] = message[63] = (char)i;
            send(message, 64);
        }
        if (receive(message, sizeof message) != 4) fail("W2: no done");
        report_w2(counts.w2_count, start);
    }
}

template <class Send, class Receive>
static void child_workloads(const char *workload, const Counts &counts, Send send, Receive receive) {
    char message[64];
    if (strcmp(workload, "w1") == 0) {
        for (long i = 0; i < counts.w1_warmup + counts.w1_iters; i++) {
            size_t n = receive(message, sizeof message);
            send(message, n);
        }
    } else {
        for (long i = 0; i < counts.w2_count; i++) {
            size_t n = receive(message, sizeof message);
            if (n != 64 || message[0] != (char)i || message[63] != (char)i) fail("W2: message corrupt or out of order");
        }
        send("done", 4);
    }
}
