#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A 64-byte-aligned, uninitialised buffer of `Float32` values.
///
/// A storage is owned by the tensors that reference it (a reshape shares its input's storage). It is
/// freed when the last tensor referencing it goes away. Storages are not thread-safe: a tensor and its
/// storage stay on the thread that made them.
public final class Storage {
    /// The number of `Float` elements.
    public let count: Int
    /// The first element. Valid for `count` elements while the storage lives.
    public let base: UnsafeMutablePointer<Float>
    /// The trace this storage counts in, when one was current where it was made.
    private let trace: MemoryTrace?

    /// Allocates `count` uninitialised elements (at least one, so `base` is never dangling).
    ///
    /// Large buffers come from ``StoragePool`` when one of the same size was freed earlier, so a
    /// training loop that allocates the same activations every step reuses them instead of asking the
    /// kernel for fresh, zero-filled pages each time.
    public init(count: Int) {
        precondition(count >= 0, "Storage count must be non-negative, got \(count)")
        self.count = count
        trace = MemoryTrace.current
        trace?.allocated(count * MemoryLayout<Float>.stride)
        if let reused = StoragePool.take(count: count) {
            base = reused
            return
        }
        var raw: UnsafeMutableRawPointer?
        let bytes = Swift.max(count, 1) * MemoryLayout<Float>.stride
        let status = posix_memalign(&raw, 64, bytes)
        precondition(status == 0 && raw != nil, "posix_memalign of \(bytes) bytes failed (\(status))")
        base = raw!.bindMemory(to: Float.self, capacity: Swift.max(count, 1))
    }

    deinit {
        trace?.freed(count * MemoryLayout<Float>.stride)
        if !StoragePool.give(base, count: count) { free(base) }
    }

    /// A buffer pointer over all elements.
    @inlinable public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: base, count: count)
    }
}

/// A process-wide cache of freed large buffers, keyed by element count.
///
/// Buffers below ``minimumCount`` elements go straight back to `malloc`, which handles them well. The
/// cache holds at most ``capacityBytes``; beyond that, freed buffers are released to the system.
public enum StoragePool {
    /// Smallest buffer (in elements) worth caching: 64 KiB.
    public static let minimumCount = 16_384
    /// The most the cache keeps, in bytes.
    public static let capacityBytes = 2 << 30

    private struct State {
        /// Free buffers by element count, as addresses (integers keep the state plainly `Sendable`).
        var free: [Int: [UInt]] = [:]
        var cachedBytes = 0
    }

    private static let state = Mutex(State())

    static func take(count: Int) -> UnsafeMutablePointer<Float>? {
        guard count >= minimumCount else { return nil }
        let address: UInt? = state.withLock { s in
            guard var list = s.free[count], let last = list.popLast() else { return nil }
            s.free[count] = list.isEmpty ? nil : list
            s.cachedBytes -= count * MemoryLayout<Float>.stride
            return last
        }
        return address.flatMap { UnsafeMutablePointer<Float>(bitPattern: $0) }
    }

    /// Keeps `pointer` for reuse; `false` when the caller must free it.
    static func give(_ pointer: UnsafeMutablePointer<Float>, count: Int) -> Bool {
        guard count >= minimumCount else { return false }
        let bytes = count * MemoryLayout<Float>.stride
        let address = UInt(bitPattern: pointer)
        return state.withLock { s in
            guard s.cachedBytes + bytes <= capacityBytes else { return false }
            s.free[count, default: []].append(address)
            s.cachedBytes += bytes
            return true
        }
    }

    /// Releases every cached buffer to the system.
    public static func drain() {
        let addresses = state.withLock { s in
            let all = s.free.values.flatMap { $0 }
            s = State()
            return all
        }
        for a in addresses { free(UnsafeMutableRawPointer(bitPattern: a)) }
    }

    /// Bytes currently cached.
    public static var cachedBytes: Int { state.withLock { $0.cachedBytes } }
}

/// Counts the bytes of the tensor storages made while it is the task's ``current`` trace, as long as they
/// live: what a piece of code keeps (a graph's saved tensors, say) and the most it held at once. For tests
/// and benchmarks; storages made on other threads (a kernel's scratch on a worker) are not counted.
public final class MemoryTrace: Sendable {
    @TaskLocal public static var current: MemoryTrace?

    private struct Counts { var live = 0, peak = 0 }
    private let counts = Mutex(Counts())

    public init() {}

    /// Bytes of the counted storages alive now.
    public var liveBytes: Int { counts.withLock { $0.live } }
    /// The most bytes of counted storages alive at once so far.
    public var peakBytes: Int { counts.withLock { $0.peak } }

    fileprivate func allocated(_ bytes: Int) {
        counts.withLock { c in c.live += bytes; c.peak = Swift.max(c.peak, c.live) }
    }

    fileprivate func freed(_ bytes: Int) { counts.withLock { $0.live -= bytes } }
}
