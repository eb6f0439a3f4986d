import Foundation
import Data
import Training
import Wire

/// Runs a ``CoordinatorCore`` over a ``MessageTransport``: turns the transport's input and the timers
/// into events and carries out the core's actions — the teacher's outputs for each step, the run
/// directory's records and states; publishing and logging go to the closures the caller sets. The same
/// driver serves the ZeroMQ coordinator and the in-process cohort.
public final class CoordinatorDriver {
    public private(set) var core: CoordinatorCore
    let transport: any MessageTransport
    let data: CohortData
    let teacher: TeacherRunner?
    let directory: CohortRunDirectory
    private var timers: [CoordinatorCore.Timer: Double] = [:]
    private var loader: (epoch: Int, next: Int, loader: BatchLoader)?
    private var batchSizes: (epoch: Int, sizes: [Int])?
    /// Where the cohort's stream events go (the log stream).
    public var publish: (StreamEvent) -> Void = { _ in }
    /// Where the core's records go.
    public var log: (CoreLog) -> Void = { _ in }
    /// Told every step's progress line (`endsEpoch` on an epoch's last).
    public var progress: (String, Bool) -> Void = { _, _ in }
    /// Told each step's number and the peers present (the Prometheus series).
    public var onStep: (Int, Int) -> Void = { _, _ in }
    /// Told each scored epoch's ensemble top-1.
    public var onEvaluation: (Double) -> Void = { _ in }
    /// Computes the teacher's outputs ahead of the steps on a thread of its own (instead of in line).
    public var teacherPipeline: TeacherPipeline?
    /// Asked before each step; true stops the cohort there after every present member checkpoints
    /// (``CoordinatorCore/StopRequest/checkpointAndStop(signal:)``).
    public var stopsBeforeStep: () -> Bool = { false }
    public private(set) var outcome: CoordinatorCore.Outcome?

    public init(core: CoordinatorCore, transport: any MessageTransport, data: CohortData, teacher: TeacherRunner?, directory: CohortRunDirectory) {
        self.core = core; self.transport = transport; self.data = data; self.teacher = teacher; self.directory = directory
    }

    public var isDone: Bool { outcome != nil }

    /// Feeds `event` to the core and carries out what follows (events the actions cause included).
    public func handle(_ event: CoordinatorCore.Event, now: Double) {
        var queue = [event]
        while !queue.isEmpty {
            for action in core.handle(queue.removeFirst(), now: now) {
                if let next = perform(action, now: now) { queue.append(next) }
            }
        }
    }

    private func perform(_ action: CoordinatorCore.Action, now: Double) -> CoordinatorCore.Event? {
        switch action {
        case .send(let message, let connection):
            do { try transport.send(message, to: connection) } catch {
                if case .heartbeat = message { return nil }
                return .sendFailed(to: connection, error: "\(error)")
            }
        case .schedule(let timer, let at):
            timers[timer] = at
        case .prepareStep(let step):
            return stopsBeforeStep() ? .stop(.checkpointAndStop(signal: nil)) : prepare(step)
        case .recordStep(let globalStep, let present):
            directory.recordStep(globalStep, present: present)
            onStep(globalStep, present.count)
        case .recordEpoch(let epoch, let globalStep, let evaluation, let seconds):
            directory.recordEpoch(epoch, globalStep: globalStep, evaluation: evaluation, seconds: seconds)
            onEvaluation(evaluation.ensembleTop1)
        case .truncateHistory(let step):
            do { try directory.truncateHistory(afterGlobalStep: step) } catch {
                log(CoreLog(.error, "could not cut the cohort's metrics back to step \(step)", ["error": "\(error)"]))
            }
        case .saveState(let state):
            do { try state.save(output: core.configuration.output) } catch {
                log(CoreLog(.error, "could not write the cohort checkpoint", ["error": "\(error)"]))
            }
        case .publish(let event):
            publish(event)
        case .log(let record):
            log(record)
        case .progress(let line, let endsEpoch):
            progress(line, endsEpoch)
        case .finish(let outcome):
            if case .finished(let summary) = outcome {
                do { try directory.writeSummary(summary) } catch {
                    log(CoreLog(.error, "could not write summary.json", ["error": "\(error)"]))
                }
            }
            self.outcome = outcome
        }
        return nil
    }

    /// The step's batch size and, with a teacher, its outputs for the step's batch.
    private func prepare(_ step: Message.Step) -> CoordinatorCore.Event {
        if let teacherPipeline {
            let prepared = teacherPipeline.outputs(for: step)
            return .stepPrepared(step, batchSize: prepared.batchSize, teacher: prepared.tensors)
        }
        guard let teacher else {
            if batchSizes?.epoch != step.epoch { batchSizes = (step.epoch, data.sampler.batches(epoch: step.epoch).map(\.count)) }
            return .stepPrepared(step, batchSize: batchSizes!.sizes[step.step], teacher: [])
        }
        if loader == nil || loader!.epoch != step.epoch || loader!.next != step.step {
            loader = (step.epoch, step.step, data.loader(epoch: step.epoch, startStep: step.step))
        }
        let batch = loader!.loader.next()!
        precondition(batch.step == step.step, "the teacher's loader follows the sampler")
        loader!.next = step.step + 1
        let t = teacher.outputs(for: batch)
        let b = batch.size
        return .stepPrepared(step, batchSize: b, teacher: [
            TensorPayload(name: "feature", shape: [b, t.featureCount], values: t.feature),
            TensorPayload(name: "logits", shape: [b, t.classCount], values: t.logits),
            TensorPayload(name: "gradient_element", shape: [b, t.featureCount], values: t.gradientElement)])
    }

    /// Handles the input already there and the timers due, without waiting; whether anything happened.
    @discardableResult
    public func pump(now: Double) throws -> Bool {
        var happened = false
        // Codistilling peers step on their own: a stop is asked for between rounds, not before a step.
        if !isDone, core.isCodistilling, stopsBeforeStep() {
            handle(.stop(.checkpointAndStop(signal: nil)), now: now)
            return true
        }
        while !isDone, let input = try transport.receive(until: 0) {
            deliver(input, now: now)
            happened = true
        }
        return fireDueTimers(now: now) || happened
    }

    /// Waits for input until the next timer (at most `longest` seconds), handles it and the timers due.
    public func waitAndHandle(longest: Double, clock: () -> Double) throws {
        let deadline = min(timers.values.min() ?? .infinity, clock() + longest)
        if let input = try transport.receive(until: deadline) { deliver(input, now: clock()) }
        fireDueTimers(now: clock())
    }

    private func deliver(_ input: TransportInput, now: Double) {
        switch input {
        case .message(let message, let from, let user):
            guard let from else { return }
            handle(.received(message, from: from, user: user), now: now)
        case .invalid(let error, let from):
            guard let from else { return }
            handle(.invalid(error, from: from), now: now)
        case .peerData:
            break  // the coordinator has no data plane
        }
    }

    @discardableResult
    private func fireDueTimers(now: Double) -> Bool {
        let due = timers.filter { $0.value <= now }.map(\.key)
        for timer in due {
            timers[timer] = nil
            handle(.timer(timer), now: now)
        }
        return !due.isEmpty
    }
}

/// Carries out a peer's ``PeerWork``: in line (the in-process cohort) or on a worker thread (a peer
/// process, so that its heartbeats go on while it computes).
public protocol PeerWorkRunner: AnyObject {
    /// Starts `work`; its result comes from ``takeResult()``.
    func submit(_ work: PeerWork)
    /// The result of the submitted work once it is done.
    func takeResult() -> PeerWorkResult?
    /// Whether submitted work has not yet produced its result.
    var isBusy: Bool { get }
}

/// Runs work in line, at submission.
public final class InlinePeerWork: PeerWorkRunner {
    let compute: PeerCompute
    private var result: PeerWorkResult?

    public init(_ compute: PeerCompute) { self.compute = compute }

    public func submit(_ work: PeerWork) { result = compute.perform(work) }
    public func takeResult() -> PeerWorkResult? { defer { result = nil }; return result }
    public var isBusy: Bool { result != nil }
}

/// Runs a ``PeerCore`` over a ``MessageTransport`` with a ``PeerWorkRunner``: turns input, timers and work
/// results into events and carries out the core's actions. The same for a peer process and for each
/// member of the in-process cohort.
public final class PeerDriver {
    public private(set) var core: PeerCore
    public private(set) var transport: any MessageTransport
    let work: any PeerWorkRunner
    private var timers: [PeerCore.Timer: Double] = [:]
    /// Where the core's records go.
    public var log: (CoreLog) -> Void = { _ in }
    /// The log batch to send the coordinator (buffered records, `status`, a change of `phase`); nil: nothing to send.
    public var logBatch: (PeerStatus?, Phase?) -> Message.LogBatch? = { _, _ in nil }
    /// A fresh connection after the coordinator was lost.
    public var reconnect: () throws -> any MessageTransport
    public private(set) var outcome: PeerCore.Outcome?

    public init(core: PeerCore, transport: any MessageTransport, work: any PeerWorkRunner) {
        self.core = core; self.transport = transport; self.work = work
        reconnect = { [transport] in transport }
    }

    public var isDone: Bool { outcome != nil }

    public func handle(_ event: PeerCore.Event, now: Double) throws {
        for action in core.handle(event, now: now) {
            switch action {
            case .send(let message):
                do { try transport.send(message, to: nil) } catch {
                    // A lost link shows as silence: the liveness check rejoins.
                    if case .heartbeat = message {} else { log(CoreLog(.warning, "could not send a \(message.type) message", ["error": "\(error)"])) }
                }
            case .publish(let message, let targets):
                do { try transport.publish(message, to: targets) } catch {
                    // A peer that does not get them is left waiting and rejoins.
                    log(CoreLog(.warning, "could not send the outputs to every peer", ["error": "\(error)"]))
                }
            case .schedule(let timer, let at):
                timers[timer] = at
            case .perform(let w):
                work.submit(w)
            case .reconnect:
                transport = try reconnect()
            case .log(let record):
                log(record)
            case .flushLogs(let status, let phase):
                if let batch = logBatch(status, phase) { try? transport.send(.log(batch), to: nil) }
            case .finish(let outcome):
                self.outcome = outcome
            }
        }
    }

    /// Handles the work result, the input already there and the timers due, without waiting; whether
    /// anything happened.
    @discardableResult
    public func pump(now: Double) throws -> Bool {
        var happened = false
        if let result = work.takeResult() {
            try handle(.done(result), now: now)
            happened = true
        }
        while !isDone, let input = try transport.receive(until: 0) {
            try deliver(input, now: now)
            happened = true
        }
        return try fireDueTimers(now: now) || happened
    }

    /// Handles a finished piece of work, then waits for input until the next timer — at most `idle`
    /// seconds, or `busy` while work runs (its end wakes nobody: the loop looks again that soon) — and
    /// handles what came and what is due.
    public func waitAndHandle(idle: Double, busy: Double, clock: () -> Double) throws {
        if let result = work.takeResult() { try handle(.done(result), now: clock()) }
        let longest = work.isBusy ? busy : idle
        let deadline = min(timers.values.min() ?? .infinity, clock() + longest)
        if !isDone, let input = try transport.receive(until: deadline) { try deliver(input, now: clock()) }
        try fireDueTimers(now: clock())
    }

    private func deliver(_ input: TransportInput, now: Double) throws {
        switch input {
        case .message(let message, _, _): try handle(.received(message), now: now)
        case .invalid(let error, _): try handle(.invalid(error), now: now)
        case .peerData(let message, let user): try handle(.peerData(message, user: user), now: now)
        }
    }

    @discardableResult
    private func fireDueTimers(now: Double) throws -> Bool {
        let due = timers.filter { $0.value <= now }.map(\.key)
        for timer in due where !isDone {
            timers[timer] = nil
            try handle(.timer(timer), now: now)
        }
        return !due.isEmpty
    }
}

/// The in-memory transport: queues between the coordinator and its peers in one process, and between
/// the peers (mesh mode). Nothing is lost, reordered or waited for; messages pass as values.
public final class InMemoryHub {
    fileprivate var toCoordinator: [(from: ConnectionID, message: Message)] = []
    fileprivate var toPeer: [[TransportInput]]

    public init(peers: Int) { toPeer = Array(repeating: [], count: peers) }

    /// Peer `rank`'s data endpoint in mesh mode.
    public static func dataEndpoint(rank: Int) -> String { "memory://peer-\(rank)" }

    /// The coordinator's end.
    public func coordinatorEnd() -> any MessageTransport { CoordinatorEnd(hub: self) }

    /// Peer `rank`'s end.
    public func peerEnd(rank: Int) -> any MessageTransport { PeerEnd(hub: self, rank: rank) }

    /// The connection id of peer `rank`'s end.
    public static func connection(rank: Int) -> ConnectionID { [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: rank >> $0) } }

    private final class CoordinatorEnd: MessageTransport {
        let hub: InMemoryHub
        init(hub: InMemoryHub) { self.hub = hub }
        func send(_ message: Message, to connection: ConnectionID?) throws {
            let rank = connection!.reduce(0) { $0 << 8 | Int($1) }
            hub.toPeer[rank].append(.message(message, from: nil, user: nil))
        }
        func receive(until deadline: Double) throws -> TransportInput? {
            guard !hub.toCoordinator.isEmpty else { return nil }
            let (from, message) = hub.toCoordinator.removeFirst()
            // Each end is its peer's by construction: it is authenticated as CURVE would (`peer-<rank>`).
            return .message(message, from: from, user: "peer-\(from.reduce(0) { $0 << 8 | Int($1) })")
        }
    }

    private final class PeerEnd: MessageTransport {
        let hub: InMemoryHub
        let rank: Int
        init(hub: InMemoryHub, rank: Int) { self.hub = hub; self.rank = rank }
        func send(_ message: Message, to connection: ConnectionID?) throws {
            hub.toCoordinator.append((InMemoryHub.connection(rank: rank), message))
        }
        func receive(until deadline: Double) throws -> TransportInput? {
            guard !hub.toPeer[rank].isEmpty else { return nil }
            return hub.toPeer[rank].removeFirst()
        }
        func publish(_ message: Message, to targets: [Message.MeshTarget]) throws {
            for target in targets {
                guard target.endpoint == InMemoryHub.dataEndpoint(rank: target.rank) else {
                    throw TransportError(description: "no peer at \(target.endpoint) in this process")
                }
                hub.toPeer[target.rank].append(.peerData(message, user: "peer-\(rank)"))
            }
        }
    }
}
