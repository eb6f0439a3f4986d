import Dispatch
import Synchronization
import CBLAS
import CKernels

/// How many threads Cohort's own loops and OpenBLAS may use in this process.
public enum Parallelism {
    private static let threads = Atomic<Int>(1)

    @TaskLocal static var scopedThreadCount: Int?

    /// The thread count in force: the innermost ``withThreadCount(_:_:)``, else the process setting.
    public static var threadCount: Int { scopedThreadCount ?? threads.load(ordering: .relaxed) }

    /// Runs `body` with `n` threads for Cohort's loops on this task or thread only (tests that compare
    /// thread counts use it; they must not change the process-wide setting under other tests' feet).
    public static func withThreadCount<R>(_ n: Int, _ body: () throws -> R) rethrows -> R {
        try $scopedThreadCount.withValue(Swift.max(1, n), operation: body)
    }

    /// Sets the thread count for Cohort's loops. Call once at start-up, before any op runs.
    ///
    /// OpenBLAS itself is kept single-threaded: Cohort splits work (the batch, for convolutions) across
    /// its own threads, each calling BLAS on its share, which avoids BLAS's per-call thread hand-off on
    /// the many mid-sized products of a CIFAR network.
    public static func setThreadCount(_ n: Int) {
        let n = Swift.max(1, n)
        threads.store(n, ordering: .relaxed)
        openblas_set_num_threads(1)
    }

    /// Splits `0..<count` into at most ``threadCount`` contiguous, non-empty ranges (one when the work,
    /// `count * costPerItem`, is below `minimumCost`).
    public static func ranges(_ count: Int, costPerItem: Int = 1, minimumCost: Int = 32_768) -> [Range<Int>] {
        guard count > 0 else { return [] }
        let n = threadCount
        let chunks = (n > 1 && count * costPerItem >= minimumCost) ? Swift.min(n, count) : 1
        return (0..<chunks).map { c in (count * c / chunks)..<(count * (c + 1) / chunks) }
    }

    /// Runs `body(index, ranges[index])` for every range, on at most ``threadCount`` threads (range `i`
    /// on worker `i mod workers`); each range's work is the same whichever thread runs it.
    ///
    /// The workers run on the caller's kernel path (``Gemm/withPath(_:_:)`` reaches them too).
    ///
    /// `body` must touch disjoint memory for different indices.
    public static func run(_ ranges: [Range<Int>], _ body: (Int, Range<Int>) -> Void) {
        let workers = Swift.min(threadCount, ranges.count)
        if workers <= 1 {
            for (i, range) in ranges.enumerated() { body(i, range) }
            return
        }
        withoutActuallyEscaping(body) { body in
            let work = UncheckedSendableBox(body)
            let path = cohort_sgemm_level()
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                // A worker may be the calling thread itself: its own choice is put back afterwards.
                let saved = cohort_sgemm_forced()
                cohort_sgemm_force(path)
                defer { cohort_sgemm_force(saved) }
                for i in stride(from: w, to: ranges.count, by: workers) { work.value(i, ranges[i]) }
            }
        }
    }

    /// The parts a reduction over a batch is split into when the work is large enough: fixed by the
    /// problem, never by the thread count, so that sums over the parts — and the weights trained — are
    /// the same at any `--threads` (up to this many threads share such a reduction).
    public static let reductionParts = 4

    /// Splits `0..<count` into `min(count, parts)` contiguous, non-empty ranges when the work
    /// (`count * costPerItem`) is at least `minimumCost`, else one: the same ranges at any thread count.
    /// For work whose parts are summed (a weight gradient over the batch, a loss over samples).
    public static func fixedRanges(_ count: Int, costPerItem: Int = 1, minimumCost: Int = 32_768, parts: Int = reductionParts) -> [Range<Int>] {
        guard count > 0 else { return [] }
        let chunks = count * costPerItem >= minimumCost ? Swift.max(1, Swift.min(parts, count)) : 1
        return (0..<chunks).map { c in (count * c / chunks)..<(count * (c + 1) / chunks) }
    }

    /// Runs `body` over `0..<count` split into contiguous chunks, one per thread, when the work is large
    /// enough (`count * costPerItem` at least `minimumCost`); otherwise on the calling thread.
    ///
    /// `body` must touch disjoint memory for disjoint ranges.
    public static func forEachChunk(_ count: Int, costPerItem: Int = 1, minimumCost: Int = 32_768,
                                    _ body: (Range<Int>) -> Void) {
        run(ranges(count, costPerItem: costPerItem, minimumCost: minimumCost)) { _, range in body(range) }
    }
}

/// Carries a non-Sendable closure into `concurrentPerform`. Sound because `run` blocks until
/// every range has finished and its contract requires each range to write disjoint memory.
private struct UncheckedSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
