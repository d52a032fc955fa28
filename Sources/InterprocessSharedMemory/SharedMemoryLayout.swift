import InterprocessCore

/// The shared memory of one connection: a header page, then one single-producer single-consumer byte ring per
/// direction. Layout in `docs/shared-memory.md`.
enum SharedLayout {
    static let magic: UInt64 = 0x0031_4D48_5343_5049  // "IPCSHM1\0" little-endian
    static let version: UInt32 = 1
    static let headerSize = 4096
    /// Offsets of the two rings' control blocks: ring 0 carries creator -> dialer, ring 1 dialer -> creator.
    static let controlOffsets = [256, 768]

    /// Bytes of the shared memory object.
    static func totalSize(ringCapacity: Int) -> Int { headerSize + 2 * ringCapacity }
    /// Bytes of address space a mapping takes: each ring's data is mapped twice in a row, so that any run of up
    /// to a ring's capacity starting inside it is contiguous in memory, wrap-around included.
    static func mappedSize(ringCapacity: Int) -> Int { headerSize + 4 * ringCapacity }

    static func isValid(ringCapacity: Int) -> Bool { ChannelOptions.isValid(sharedMemoryRingSize: ringCapacity) }
}

/// One direction's ring inside the mapping. Each counter is a byte position that only grows; its own cache line.
struct SharedRing {
    let control: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer
    let capacity: Int

    init(base: UnsafeMutableRawPointer, index: Int, capacity: Int) {
        control = base + SharedLayout.controlOffsets[index]
        data = base + SharedLayout.headerSize + index * 2 * capacity
        self.capacity = capacity
    }

    /// Bytes published by the producer (written only by the producer).
    var head: UnsafeMutableRawPointer { control }
    /// Bytes consumed by the consumer (written only by the consumer).
    var tail: UnsafeMutableRawPointer { control + 64 }
    /// Set by the consumer before it sleeps; the producer wakes it after publishing.
    var consumerSleeping: UnsafeMutableRawPointer { control + 128 }
    /// Set by the producer before it sleeps for room; the consumer wakes it after consuming.
    var producerSleeping: UnsafeMutableRawPointer { control + 192 }
    /// Set by the producer after its last byte: the direction ended cleanly.
    var writerClosed: UnsafeMutableRawPointer { control + 256 }
}

