// ZeroMQ (libzmq) PAIR sockets on the standard workloads: `zmq_pair ipc|tcp w1|w2`. One socket pair, both
// directions, default high-water marks (1,000 messages each way); tcp over loopback.
#include <zmq.h>
#include <sys/wait.h>
#include <unistd.h>
#include <string>
#include "peer_common.h"

int main(int argc, char **argv) {
    if (argc != 3) fail("usage: zmq_pair ipc|tcp w1|w2");
    std::string transport = argv[1], workload = argv[2];
    Counts counts;
    std::string endpoint;
    void *context = zmq_ctx_new();
    void *parent = zmq_socket(context, ZMQ_PAIR);
    if (transport == "ipc") {
        endpoint = "ipc:///tmp/ipc-bench-zmq-" + std::to_string(getpid());
        if (zmq_bind(parent, endpoint.c_str()) != 0) fail("zmq bind ipc");
    } else {
        if (zmq_bind(parent, "tcp://127.0.0.1:*") != 0) fail("zmq bind tcp");
        char last[256];
        size_t length = sizeof last;
        zmq_getsockopt(parent, ZMQ_LAST_ENDPOINT, last, &length);
        endpoint = last;
    }
    char message[64];
    memset(message, 1, sizeof message);
    pid_t child = fork();
    if (child == 0) {
        pin_child();
        // A fresh context: libzmq's threads do not survive fork.
        void *child_context = zmq_ctx_new();
        void *socket = zmq_socket(child_context, ZMQ_PAIR);
        if (zmq_connect(socket, endpoint.c_str()) != 0) fail("zmq connect");
        zmq_send(socket, "ready", 5, 0);
        if (workload == "w1") {
            for (long i = 0; i < counts.w1_warmup + counts.w1_iters; i++) {
                int n = zmq_recv(socket, message, sizeof message, 0);
                zmq_send(socket, message, n, 0);
            }
        } else {
            for (long i = 0; i < counts.w2_count; i++) {
                int n = zmq_recv(socket, message, sizeof message, 0);
                if (n != 64 || message[0] != (char)i || message[63] != (char)i) fail("zmq W2: message corrupt or out of order");
            }
            zmq_send(socket, "done", 4, 0);
        }
        int linger = 1000;
        zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(socket);
        zmq_ctx_term(child_context);
        _exit(0);
    }
    if (zmq_recv(parent, message, sizeof message, 0) != 5) fail("zmq: no ready");
    if (workload == "w1") {
        std::vector<uint64_t> samples;
        samples.reserve(counts.w1_iters);
        for (long i = 0; i < counts.w1_warmup + counts.w1_iters; i++) {
            message[0] = (char)i;
            uint64_t t0 = now_ns();
            zmq_send(parent, message, 64, 0);
            if (zmq_recv(parent, message, sizeof message, 0) != 64 || message[0] != (char)i) fail("zmq W1: bad echo");
            if (i >= counts.w1_warmup) samples.push_back(now_ns() - t0);
        }
        report_w1(samples);
    } else {
        uint64_t start = now_ns();
        for (long i = 0; i < counts.w2_count; i++) {
            message[0] = message[63] = (char)i;
            zmq_send(parent, message, 64, 0);
        }
        if (zmq_recv(parent, message, sizeof message, 0) != 4) fail("zmq W2: no done");
        report_w2(counts.w2_count, start);
    }
    int status = 0;
    waitpid(child, &status, 0);
    zmq_close(parent);
    zmq_ctx_term(context);
    if (transport == "ipc") unlink(endpoint.c_str() + 6);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
