#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CKernels
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
    /// The pooled pages behind `base`, for a large buffer; nil for a small one from `malloc`.
    private let pages: StoragePool.Pages?

    /// Allocates `count` uninitialised elements (at least one, so `base` is never dangling).
    ///
    /// Buffers of ``StoragePool/minimumCount`` elements or more are whole pages from ``StoragePool``,
    /// which reuses the pages of freed buffers, so a training loop that allocates the same activations
    /// every step does not ask the system for fresh, zero-filled pages each time.
    public init(count: Int) {
        precondition(count >= 0, "Storage count must be non-negative, got \(count)")
        self.count = count
        trace = MemoryTrace.current
        trace?.allocated(count * MemoryLayout<Float>.stride)
        if count >= StoragePool.minimumCount {
            let pages = StoragePool.shared.take(bytes: count * MemoryLayout<Float>.stride)
            self.pages = pages
            base = UnsafeMutablePointer<Float>(bitPattern: pages.address)!
            return
        }
        pages = nil
        var raw: UnsafeMutableRawPointer?
        let bytes = Swift.max(count, 1) * MemoryLayout<Float>.stride
        let status = posix_memalign(&raw, 64, bytes)
        precondition(status == 0 && raw != nil, "posix_memalign of \(bytes) bytes failed (\(status))")
        base = raw!.bindMemory(to: Float.self, capacity: Swift.max(count, 1))
    }

    deinit {
        trace?.freed(count * MemoryLayout<Float>.stride)
        if let pages { StoragePool.shared.give(pages) } else { free(base) }
    }

    /// A buffer pointer over all elements.
    @inlinable public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: base, count: count)
    }
}

/// The process-wide source of large tensor buffers: whole pages from the system, and a cache of the pages
/// of freed buffers.
///
/// A request is served by a cached buffer of its size when there is one. Otherwise, on Linux, the pages of
/// cached buffers of other sizes are *moved* into the new buffer (`mremap`: no copy, no new memory) and
/// fresh pages are mapped only for what the cache cannot cover. So the memory one stage of a network frees
/// serves the next stage even when their activations differ in size: at its peak the process holds little
/// more than its live tensors, and few pages are faulted in anew (on a virtual machine that costs about
/// 1 ms per MB, ten times writing them). Buffers below ``minimumCount`` elements come from `malloc`.
///
/// The cache holds at most `capacityBytes`; beyond that, freed buffers go back to the system. Thread-safe:
/// storages are made and freed on every worker thread.
public final class StoragePool: Sendable {
    /// The pool every storage uses.
    public static let shared = StoragePool()
    /// Smallest storage (in elements) taken from the pool: 64 KiB.
    public static let minimumCount = 16_384
    /// The system's page size; every buffer here is a whole number of pages.
    public static let pageBytes = cohort_page_size()

    /// The most the cache keeps, in bytes.
    public let capacityBytes: Int
    /// The most pieces one buffer is assembled from; what they leave uncovered is fresh pages.
    public let maximumPieces: Int
    /// The smallest leftover of a split buffer that is kept (smaller ones go back to the system).
    public let smallestKeptBytes: Int
    /// The smallest buffer assembled from cached buffers of other sizes: smaller ones are a cached buffer
    /// of their size or fresh pages, so that the small buffers of a step (weight gradients, scratch) do not
    /// cut the large ones into pieces.
    public let smallestAssembledBytes: Int

    /// Pages at consecutive addresses, made of `pieces` (their lengths in bytes, in address order) that each
    /// lie inside one system mapping, as `mremap` needs of the range it moves.
    public struct Pages: Sendable {
        /// The first byte.
        public fileprivate(set) var address: UInt
        /// The length of each piece, in address order.
        public fileprivate(set) var pieces: [Int]
        /// The sum of `pieces`.
        public fileprivate(set) var bytes: Int
    }

    /// What the pool has done since the process started.
    public struct Statistics: Sendable, Equatable {
        /// Bytes of fresh pages mapped (they become physical memory when first touched).
        public var freshBytes = 0
        /// Bytes of cached pages moved into buffers of another size.
        public var movedBytes = 0
        /// Pieces moved (one `mremap` each).
        public var moves = 0
        /// Bytes returned to the system.
        public var releasedBytes = 0
    }

    private struct State {
        /// Cached buffers by size in bytes.
        var free: [Int: [Pages]] = [:]
        var cachedBytes = 0
        var statistics = Statistics()

        mutating func insert(_ pages: Pages) {
            free[pages.bytes, default: []].append(pages)
            cachedBytes += pages.bytes
        }

        mutating func pop(bytes: Int) -> Pages? {
            guard let list = free[bytes] else { return nil }
            return pop(bytes: bytes, at: list.count - 1)
        }

        mutating func pop(bytes: Int, at index: Int) -> Pages {
            var list = free[bytes]!
            let pages = list.remove(at: index)
            free[bytes] = list.isEmpty ? nil : list
            cachedBytes -= bytes
            return pages
        }

        /// The cached buffer of `smallest` bytes or more with the most pieces for its size (the size and
        /// its index there).
        func mostFragmented(smallest: Int) -> (bytes: Int, index: Int)? {
            var best: (bytes: Int, index: Int, density: Double)?
            for (size, list) in free where size >= smallest {
                for (index, pages) in list.enumerated() {
                    let density = Double(pages.pieces.count) / Double(size)
                    if density > best?.density ?? 0 { best = (size, index, density) }
                }
            }
            return best.map { ($0.bytes, $0.index) }
        }

        /// The size to take pages from for `remaining` bytes: the smallest cached size of `smallest` bytes or
        /// more that covers them (one buffer split), else the largest (the fewest pieces).
        func sourceSize(for remaining: Int, smallest: Int) -> Int? {
            var smallestCovering: Int?
            var largest: Int?
            for size in free.keys where size >= smallest {
                if size >= remaining, size < (smallestCovering ?? .max) { smallestCovering = size }
                if size > (largest ?? 0) { largest = size }
            }
            return smallestCovering ?? largest
        }
    }

    private let state = Mutex(State())

    /// Whether this system can move pages between addresses.
    #if os(Linux)
    public static let movesPages = true
    #else
    public static let movesPages = false
    #endif

    /// A pool that caches up to `capacityBytes`, assembles buffers of `smallestAssembledBytes` or more from
    /// at most `maximumPieces` cached pieces, and keeps leftovers of `smallestKeptBytes` or more.
    public init(capacityBytes: Int = 2 << 30, maximumPieces: Int = 16,
                smallestKeptBytes: Int = StoragePool.minimumCount * MemoryLayout<Float>.stride,
                smallestAssembledBytes: Int = 1 << 20) {
        precondition(maximumPieces >= 1 && smallestKeptBytes >= 1 && capacityBytes >= 0 && smallestAssembledBytes >= 0)
        self.capacityBytes = capacityBytes
        self.maximumPieces = maximumPieces
        self.smallestKeptBytes = smallestKeptBytes
        self.smallestAssembledBytes = smallestAssembledBytes
    }

    /// A buffer of at least `bytes` (rounded up to whole pages), uninitialised: a cached buffer's pages,
    /// pages moved from cached buffers of other sizes, or fresh zero-filled pages.
    public func take(bytes requested: Int) -> Pages {
        let bytes = Swift.max(requested + Self.pageBytes - 1, Self.pageBytes) / Self.pageBytes * Self.pageBytes
        let maximumPieces = maximumPieces, smallestKeptBytes = smallestKeptBytes
        let smallestAssembledBytes = smallestAssembledBytes
        var plan: [(address: UInt, length: Int)] = []
        var release: [Pages] = []
        let cached: Pages? = state.withLock { s in
            if let exact = s.pop(bytes: bytes) { return exact }
            guard Self.movesPages, bytes >= smallestAssembledBytes else { return nil }
            var remaining = bytes
            while remaining > 0, plan.count < maximumPieces, let size = s.sourceSize(for: remaining, smallest: smallestAssembledBytes) {
                var source = s.pop(bytes: size)!
                while remaining > 0, plan.count < maximumPieces, let first = source.pieces.first {
                    let length = Swift.min(first, remaining)
                    plan.append((source.address, length))
                    source.address += UInt(length)
                    source.bytes -= length
                    remaining -= length
                    if length == first { source.pieces.removeFirst() } else { source.pieces[0] = first - length }
                }
                // A split piece's small remainder goes back to the system rather than into later buffers
                // as a piece of its own (pieces would only get smaller).
                while let first = source.pieces.first, first < smallestKeptBytes {
                    release.append(Pages(address: source.address, pieces: [first], bytes: first))
                    source.address += UInt(first)
                    source.bytes -= first
                    source.pieces.removeFirst()
                }
                if source.bytes > 0 { s.insert(source) }
            }
            // Out of pieces (the cache is fragmented): the rest of the buffer will be fresh pages; as many
            // cached bytes, the most fragmented buffers first, go back to the system so that the process
            // does not grow.
            if remaining > 0, plan.count == maximumPieces {
                var excess = remaining
                while excess > 0, let fragmented = s.mostFragmented(smallest: smallestAssembledBytes) {
                    let pages = s.pop(bytes: fragmented.bytes, at: fragmented.index)
                    release.append(pages)
                    excess -= pages.bytes
                }
            }
            return nil
        }
        if let cached { return cached }
        for pages in release { unmap(pages) }

        guard let raw = cohort_pages_map(bytes) else {
            preconditionFailure("mmap of \(bytes) bytes failed: out of memory")
        }
        let address = UInt(bitPattern: raw)
        var pieces: [Int] = []
        var filled = 0
        var moved = 0
        for (index, piece) in plan.enumerated() {
            let destination = UnsafeMutableRawPointer(bitPattern: address + UInt(filled))!
            guard cohort_pages_move(UnsafeMutableRawPointer(bitPattern: piece.address), piece.length, destination) == 0 else {
                // The system would not move them (out of mappings, say): return the rest of the plan to it;
                // the buffer's remainder stays the fresh pages mapped above.
                for rest in plan[index...] {
                    unmap(Pages(address: rest.address, pieces: [rest.length], bytes: rest.length))
                }
                break
            }
            pieces.append(piece.length)
            filled += piece.length
            moved += 1
        }
        if filled < bytes { pieces.append(bytes - filled) }
        state.withLock { s in
            s.statistics.freshBytes += bytes - filled
            s.statistics.movedBytes += filled
            s.statistics.moves += moved
        }
        return Pages(address: address, pieces: pieces, bytes: bytes)
    }

    /// Keeps `pages` (from ``take(bytes:)``, no longer used) for reuse, or returns them to the system when
    /// the cache is full.
    public func give(_ pages: Pages) {
        let kept = state.withLock { s in
            guard s.cachedBytes + pages.bytes <= capacityBytes else { return false }
            s.insert(pages)
            return true
        }
        if !kept { unmap(pages) }
    }

    private func unmap(_ pages: Pages) {
        let status = cohort_pages_unmap(UnsafeMutableRawPointer(bitPattern: pages.address), pages.bytes)
        precondition(status == 0, "munmap of \(pages.bytes) bytes failed (\(status))")
        state.withLock { $0.statistics.releasedBytes += pages.bytes }
    }

    /// Returns every cached buffer to the system.
    public func drain() {
        let all = state.withLock { s in
            let all = s.free.values.flatMap { $0 }
            s.free = [:]
            s.cachedBytes = 0
            return all
        }
        for pages in all { unmap(pages) }
    }

    /// Bytes currently cached.
    public var cachedBytes: Int { state.withLock { $0.cachedBytes } }

    /// What the pool has done so far.
    public var statistics: Statistics { state.withLock { $0.statistics } }
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
