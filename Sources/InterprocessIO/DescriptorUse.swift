import Synchronization

/// Who is using a stream's descriptors (and, for shared memory, its mapping), so that they are released only
/// once no read or write is in progress on another thread: a descriptor number reused by the kernel must never
/// be read or written by mistake, and unmapped memory never touched.
///
/// Lock-free, because every read and write takes part: one word holds the number of users (bits 0-61), whether
/// the stream is closed (bit 62) and whether it was released (bit 63). Exactly one caller is told to release.
package struct DescriptorUse: ~Copyable {
    @usableFromInline let word = Atomic<UInt64>(0)
    @usableFromInline static var closedBit: UInt64 { 1 << 62 }
    @usableFromInline static var releasedBit: UInt64 { 1 << 63 }

    package init() {}

    /// A read or write begins; false once the stream is closed. Inlinable, like ``leave()``: every read and write
    /// of a transport calls both.
    @inlinable
    package func enter() -> Bool {
        var current = word.load(ordering: .relaxed)
        while true {
            if current & Self.closedBit != 0 { return false }
            let (exchanged, original) = word.compareExchange(expected: current, desired: current + 1, ordering: .acquiring)
            if exchanged { return true }
            current = original
        }
    }

    /// A read or write ended; true when the caller must release the descriptors now (the last user after a close).
    @inlinable
    package func leave() -> Bool {
        word.subtract(1, ordering: .acquiringAndReleasing).newValue == Self.closedBit && claimRelease()
    }

    /// The stream is closed; true when the caller must release the descriptors now (nobody is using them).
    package func close() -> Bool {
        let before = word.bitwiseOr(Self.closedBit, ordering: .acquiringAndReleasing).oldValue
        return before == 0 && claimRelease()
    }

    /// The descriptors were handed to another owner: never release them here.
    package func detach() {
        word.store(Self.closedBit | Self.releasedBit, ordering: .releasing)
    }

    package var released: Bool { word.load(ordering: .acquiring) & Self.releasedBit != 0 }

    /// Closed and unused: whoever sets the released bit first releases.
    @usableFromInline
    func claimRelease() -> Bool {
        word.compareExchange(expected: Self.closedBit, desired: Self.closedBit | Self.releasedBit, ordering: .acquiringAndReleasing).exchanged
    }
}
