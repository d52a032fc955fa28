// boost::interprocess::message_queue (a mutex and two condition variables in shared memory) on the standard
// workloads: `boost_mq w1|w2`. Two queues of 1,024 slots of 64 bytes, one per direction.
#include <boost/interprocess/ipc/message_queue.hpp>
#include <sys/wait.h>
#include <unistd.h>
#include <string>
#include "peer_common.h"

using boost::interprocess::message_queue;
namespace bip = boost::interprocess;

int main(int argc, char **argv) {
    if (argc != 2) fail("usage: boost_mq w1|w2");
    std::string workload = argv[1];
    Counts counts;
    std::string tag = std::to_string(getpid());
    std::string down = "ipc-bench-down-" + tag, up = "ipc-bench-up-" + tag;
    message_queue::remove(down.c_str());
    message_queue::remove(up.c_str());
    message_queue to_child(bip::create_only, down.c_str(), 1024, 64);
    message_queue to_parent(bip::create_only, up.c_str(), 1024, 64);
    char message[64];
    memset(message, 1, sizeof message);
    size_t size;
    unsigned priority;
    pid_t child = fork();
    if (child == 0) {
        pin_child();
        message_queue in(bip::open_only, down.c_str()), out(bip::open_only, up.c_str());
        if (workload == "w1") {
            for (long i = 0; i < counts.w1_warmup + counts.w1_iters; i++) {
                in.receive(message, sizeof message, size, priority);
                out.send(message, size, 0);
            }
        } else {
            for (long i = 0; i < counts.w2_count; i++) {
                in.receive(message, sizeof message, size, priority);
                if (size != 64 || message[0] != (char)i || message[63] != (char)i) fail("boost W2: message corrupt or out of order");
            }
            out.send("done", 4, 0);
        }
        _exit(0);
    }
    if (workload == "w1") {
        std::vector<uint64_t> samples;
        samples.reserve(counts.w1_iters);
        for (long i = 0; i < counts.w1_warmup + counts.w1_iters; i++) {
            message[0] = (char)i;
            uint64_t t0 = now_ns();
            to_child.send(message, 64, 0);
            to_parent.receive(message, sizeof message, size, priority);
            if (size != 64 || message[0] != (char)i) fail("boost W1: bad echo");
            if (i >= counts.w1_warmup) samples.push_back(now_ns() - t0);
        }
        report_w1(samples);
    } else {
        uint64_t start = now_ns();
        for (long i = 0; i < counts.w2_count; i++) {
            message[0] = message[63] = (char)i;
            to_child.send(message, 64, 0);
        }
        to_parent.receive(message, sizeof message, size, priority);
        report_w2(counts.w2_count, start);
    }
    int status = 0;
    waitpid(child, &status, 0);
    message_queue::remove(down.c_str());
    message_queue::remove(up.c_str());
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
