import Dispatch
import Synchronization
import CBLAS

/// How many threads Cohort's own loops and OpenBLAS may use in this process.
public enum Parallelism {
    private static let threads = Atomic<Int>(1)

    /// The configured thread count (at least 1).
    public static var threadCount: Int { threads.load(ordering: .relaxed) }

    /// Sets the thread count for Cohort's loops and OpenBLAS. Call once at start-up, before any op runs.
    public static func setThreadCount(_ n: Int) {
        let n = Swift.max(1, n)
        threads.store(n, ordering: .relaxed)
        openblas_set_num_threads(Int32(n))
    }

    /// Runs `body` over `0..<count` split into contiguous chunks, one per thread, when the work is large
    /// enough (`count * costPerItem` at least `minimumCost`); otherwise on the calling thread.
    ///
    /// `body` must touch disjoint memory for disjoint ranges.
    public static func forEachChunk(_ count: Int, costPerItem: Int = 1, minimumCost: Int = 32_768,
                                    _ body: (Range<Int>) -> Void) {
        let n = threadCount
        guard n > 1, count > 1, count * costPerItem >= minimumCost else {
            if count > 0 { body(0..<count) }
            return
        }
        let chunks = Swift.min(n, count)
        withoutActuallyEscaping(body) { body in
            let work = UncheckedSendableBox(body)
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                let lo = count * c / chunks, hi = count * (c + 1) / chunks
                if lo < hi { work.value(lo..<hi) }
            }
        }
    }
}

/// Carries a non-Sendable closure into `concurrentPerform`. Sound because `forEachChunk` blocks until
/// every chunk has finished and its contract requires each chunk to write disjoint memory.
private struct UncheckedSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
