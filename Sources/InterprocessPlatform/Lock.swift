#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The package's mutex: `Synchronization.Mutex`, except in a build for the thread sanitizer.
///
/// The thread sanitizer does not see the ordering that `Mutex` provides (its lock is a futex word it does not
/// know), so every access it guards looks like a race to it: about a thousand false reports on this package's
/// tests. Built with `-DINSTRUMENTED_LOCK` (`.ci/run` does, for its thread-sanitizer job), this type takes a
/// `pthread_mutex_t` instead, which the sanitizer intercepts, so its reports are about real races only. The
/// interface is `Mutex`'s `withLock`.
@usableFromInline
package struct Lock<Value: ~Copyable>: ~Copyable, @unchecked Sendable {
    #if INSTRUMENTED_LOCK
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let value: UnsafeMutablePointer<Value>

    package init(_ initialValue: consuming sending Value) {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        value = .allocate(capacity: 1)
        value.initialize(to: initialValue)
    }

    deinit {
        value.deinitialize(count: 1)
        value.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable
    package borrowing func withLock<Result: ~Copyable, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }

    @inlinable
    package borrowing func withLockIfAvailable<Result: ~Copyable, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
    #else
    @usableFromInline let mutex: Mutex<Value>

    package init(_ initialValue: consuming sending Value) {
        mutex = Mutex(initialValue)
    }

    @inlinable
    package borrowing func withLock<Result: ~Copyable, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        try mutex.withLock(body)
    }

    @inlinable
    package borrowing func withLockIfAvailable<Result: ~Copyable, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result? {
        try mutex.withLockIfAvailable(body)
    }
    #endif
}
