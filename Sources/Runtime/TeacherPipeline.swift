import Foundation
import Synchronization
import Data
import Wire

/// The teacher's outputs computed ahead of the cohort: the batch schedule is known in advance (one
/// sampler, one seed), so a thread of its own runs the teacher on the next `depth` steps' batches while
/// the peers train, into a bounded queue. A step then finds its outputs ready whenever the teacher's
/// forward pass is shorter than a peer's whole step and the coordinator has a core for it.
///
/// The outputs are the same as computed in line (the teacher is in evaluation mode: nothing in it
/// changes); a jump in the schedule (a resume, a step run again) discards what was computed ahead and
/// starts over from the step asked for.
public final class TeacherPipeline: Sendable {
    /// What the worker computed: a step's batch size and the teacher's tensors for it.
    public struct Prepared: Sendable {
        public let step: Message.Step
        public let batchSize: Int
        public let tensors: [TensorPayload]
    }

    private struct State {
        /// The step the worker computes next (nil: idle until asked).
        var next: Message.Step?
        var ready: [Prepared] = []
        /// Bumped on each restart, so a computation begun before it is dropped.
        var generation = 0
        var stopping = false
    }

    private let state = Mutex(State())
    private let changed = NSCondition()
    private let finished = DispatchSemaphore(value: 0)
    private let data: CohortData
    private let stepsPerEpoch: Int
    private let totalSteps: Int
    /// Steps computed ahead at most.
    public let depth: Int

    /// Starts the worker, which loads its own copy of the teacher (`settings.checkpoint`, already checked
    /// by the caller's); it computes nothing until the first ``outputs(for:)``.
    public init(settings: CohortConfiguration.TeacherSettings, data: CohortData, epochs: Int, depth: Int = 2) {
        self.data = data
        stepsPerEpoch = data.stepsPerEpoch
        totalSteps = epochs * data.stepsPerEpoch
        self.depth = max(1, depth)
        let kind = data.trainSet.kind
        let thread = Thread { [self] in
            let teacher: TeacherRunner
            do { teacher = try TeacherRunner(settings: settings, dataSet: kind) } catch {
                preconditionFailure("the teacher loaded a moment ago no longer loads: \(error)")
            }
            work(teacher)
        }
        thread.name = "cohort-teacher"
        thread.start()
    }

    /// The teacher's outputs for `step`'s batch: from the queue when computed ahead, else after the
    /// worker (restarted at `step` after a jump) computes them.
    public func outputs(for step: Message.Step) -> Prepared {
        changed.lock()
        defer { changed.unlock() }
        let matches = state.withLock { s in s.ready.first?.step == step || (s.ready.isEmpty && s.next == step) }
        if !matches {
            state.withLock { s in
                s.ready = []
                s.next = step
                s.generation += 1
            }
            changed.broadcast()
        }
        while true {
            if let prepared = state.withLock({ s -> Prepared? in
                guard s.ready.first?.step == step else { return nil }
                return s.ready.removeFirst()
            }) {
                changed.broadcast()  // room in the queue
                return prepared
            }
            changed.wait()
        }
    }

    private func work(_ teacher: TeacherRunner) {
        defer { finished.signal() }
        while true {
            changed.lock()
            var job: (Message.Step, Int)?
            while job == nil {
                let (stop, candidate) = state.withLock { s -> (Bool, (Message.Step, Int)?) in
                    if s.stopping { return (true, nil) }
                    guard let next = s.next, s.ready.count < depth else { return (false, nil) }
                    return (false, (next, s.generation))
                }
                if stop { changed.unlock(); return }
                job = candidate
                if job == nil { changed.wait() }
            }
            changed.unlock()
            let (step, generation) = job!
            let prepared = compute(step, teacher)
            changed.lock()
            state.withLock { s in
                guard s.generation == generation, s.next == step else { return }
                s.ready.append(prepared)
                let g = step.globalStep + 1
                s.next = g < totalSteps ? Message.Step(epoch: g / stepsPerEpoch, step: g % stepsPerEpoch, globalStep: g) : nil
            }
            changed.broadcast()
            changed.unlock()
        }
    }

    /// The loader positioned for the next step computed, kept across steps of an epoch.
    private let loader = Mutex<(epoch: Int, next: Int, loader: BatchLoader)?>(nil)

    private func compute(_ step: Message.Step, _ teacher: TeacherRunner) -> Prepared {
        let batch = loader.withLock { held -> Batch in
            if held == nil || held!.epoch != step.epoch || held!.next != step.step {
                held = (step.epoch, step.step, data.loader(epoch: step.epoch, startStep: step.step))
            }
            let batch = held!.loader.next()!
            precondition(batch.step == step.step, "the teacher's loader follows the sampler")
            held!.next = step.step + 1
            return batch
        }
        let t = teacher.outputs(for: batch)
        let b = batch.size
        return Prepared(step: step, batchSize: b, tensors: [
            TensorPayload(name: "feature", shape: [b, t.featureCount], values: t.feature),
            TensorPayload(name: "logits", shape: [b, t.classCount], values: t.logits),
            TensorPayload(name: "gradient_element", shape: [b, t.featureCount], values: t.gradientElement)])
    }

    /// Stops the worker after the step under way.
    public func stop() {
        changed.lock()
        state.withLock { $0.stopping = true }
        changed.broadcast()
        changed.unlock()
        finished.wait()
    }
}
