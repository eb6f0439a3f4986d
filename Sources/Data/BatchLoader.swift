import Foundation
import Dispatch
import Synchronization

/// Prepares an epoch's batches on a background thread, a few ahead of the training step.
///
/// `next()` blocks until the next batch is ready and returns `nil` after the last one. Dropping the
/// loader stops its thread.
public final class BatchLoader: Sendable {
    private let channel: Channel<Batch>
    public let batchCount: Int

    /// Starts preparing `batches` (data-set indices) of `epoch` from step `startStep` on.
    ///
    /// - Parameter depth: how many prepared batches may wait.
    public init(assembler: BatchAssembler, batches: [[Int]], epoch: Int, startStep: Int = 0, depth: Int = 2) {
        let channel = Channel<Batch>(capacity: depth)
        self.channel = channel
        batchCount = batches.count
        let first = Swift.min(Swift.max(startStep, 0), batches.count)
        let thread = Thread {
            for step in first..<batches.count {
                if !channel.send(assembler.assemble(indices: batches[step], epoch: epoch, step: step)) { return }
            }
            channel.finish()
        }
        thread.name = "cohort-batches"
        thread.start()
    }

    /// The next batch, or `nil` when the epoch is done.
    public func next() -> Batch? { channel.receive() }

    deinit { channel.cancel() }
}

/// A bounded, blocking single-producer single-consumer queue of `Sendable` values.
final class Channel<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var finished = false
        var cancelled = false
    }
    private let state = Mutex(State())
    private let available = DispatchSemaphore(value: 0)
    private let space: DispatchSemaphore

    init(capacity: Int) {
        // Start at 0 and raise to `capacity`: libdispatch refuses to free a semaphore whose value is below
        // its initial value, which a loader dropped with batches still queued would otherwise leave.
        space = DispatchSemaphore(value: 0)
        for _ in 0..<capacity { space.signal() }
    }

    /// Adds `element`, waiting for space; `false` when the consumer has gone.
    func send(_ element: Element) -> Bool {
        space.wait()
        let accepted = state.withLock { s -> Bool in
            if s.cancelled { return false }
            s.items.append(element)
            return true
        }
        if accepted { available.signal() }
        return accepted
    }

    /// Marks the end of the stream.
    func finish() {
        state.withLock { $0.finished = true }
        available.signal()
    }

    /// The next element, or `nil` once the producer has finished and everything was taken.
    func receive() -> Element? {
        available.wait()
        let element: Element? = state.withLock { s in
            s.items.isEmpty ? nil : s.items.removeFirst()
        }
        if element != nil { space.signal() } else { available.signal() }  // let later calls see the end too
        return element
    }

    /// Tells the producer to stop.
    func cancel() {
        state.withLock { $0.cancelled = true }
        space.signal()
    }
}
