// ZeroMQ (libzmq) PAIR sockets on the standard workloads: `zmq_pair ipc|tcp w1|w2`. One socket pair, both
// directions, default high-water marks (1,000 messages each way); tcp over loopback.
#include <zmq.h>
#include <sys/wait.h>
#include <unistd.h>
#include <string>
#include "peer_common.h"

int main(int argc, char **argv) {
    if (argc != 3) fail("usage: zmq_pair ipc|tcp w1|w2");
    std::string transport = argv[1];
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
    auto sender = [](void *socket) { return [socket](const char *bytes, size_t n) { zmq_send(socket, bytes, n, 0); }; };
    auto receiver = [](void *socket) {
        return [socket](char *buffer, size_t capacity) {
            int n = zmq_recv(socket, buffer, capacity, 0);
            if (n < 0) fail("zmq_recv");
            return (size_t)n;
        };
    };
    pid_t child = fork();
    if (child == 0) {
        pin_child();
        // A fresh context: libzmq's threads do not survive fork.
        void *child_context = zmq_ctx_new();
        void *socket = zmq_socket(child_context, ZMQ_PAIR);
        if (zmq_connect(socket, endpoint.c_str()) != 0) fail("zmq connect");
        zmq_send(socket, "ready", 5, 0);
        child_workloads(argv[2], counts, sender(socket), receiver(socket));
        int linger = 1000;
        zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(socket);
        zmq_ctx_term(child_context);
        _exit(0);
    }
    char ready[8];
    if (zmq_recv(parent, ready, sizeof ready, 0) != 5) fail("zmq: no ready");
    parent_workloads(argv[2], counts, sender(parent), receiver(parent));
    int status = 0;
    waitpid(child, &status, 0);
    zmq_close(parent);
    zmq_ctx_term(context);
    if (transport == "ipc") unlink(endpoint.c_str() + 6);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
