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
    Counts counts;
    std::string tag = std::to_string(getpid());
    std::string down = "ipc-bench-down-" + tag, up = "ipc-bench-up-" + tag;
    message_queue::remove(down.c_str());
    message_queue::remove(up.c_str());
    message_queue to_child(bip::create_only, down.c_str(), 1024, 64);
    message_queue to_parent(bip::create_only, up.c_str(), 1024, 64);
    auto receiver = [](message_queue &queue) {
        return [&queue](char *buffer, size_t capacity) {
            size_t size;
            unsigned priority;
            queue.receive(buffer, capacity, size, priority);
            return size;
        };
    };
    pid_t child = fork();
    if (child == 0) {
        pin_child();
        message_queue in(bip::open_only, down.c_str()), out(bip::open_only, up.c_str());
        child_workloads(argv[1], counts, [&](const char *bytes, size_t n) { out.send(bytes, n, 0); }, receiver(in));
        _exit(0);
    }
    parent_workloads(argv[1], counts, [&](const char *bytes, size_t n) { to_child.send(bytes, n, 0); }, receiver(to_parent));
    int status = 0;
    waitpid(child, &status, 0);
    message_queue::remove(down.c_str());
    message_queue::remove(up.c_str());
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
