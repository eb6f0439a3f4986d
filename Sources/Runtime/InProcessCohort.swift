import Foundation
import Wire
import Tensors
import NN
import Data
import Distill
import Training

/// Runs a whole cohort — the coordinator, every peer and the teacher — in one process: the same
/// protocol cores and drivers as the distributed cohort (`cohort coordinator`, `cohort peer`), over the
/// in-memory transport, so that it trains exactly what the processes train.
///
/// Each step: the teacher's outputs for the batch; every peer's forward pass; then every peer finishes
/// its step with the others' outputs. All peers see the same batches (one sampler, one seed).
public final class InProcessCohort {
    public let configuration: CohortConfiguration
    public let peers: [PeerTrainer]
    public let teacher: TeacherRunner?
    let data: CohortData
    let computes: [PeerCompute]
    /// Steps the teacher's outputs are computed ahead, on a thread of their own (0: in line).
    public var teacherAhead = 2
    /// Records the peers log at info and above go here (the in-process cohort prints its own lines
    /// for the epoch ends; a peer's warnings and errors come through).
    private let peerLog: LogBox

    final class LogBox { var report: (String) -> Void = { _ in } }

    /// Loads the data (telling `report` what it loads) and builds every network.
    public init(configuration: CohortConfiguration, report: (String) -> Void = { _ in }) throws {
        self.configuration = configuration
        // The teacher first: a wrong checkpoint is reported before the data set is loaded.
        let teacherRunner = try configuration.teacher.map { try TeacherRunner(settings: $0, dataSet: configuration.data.dataSet) }
        data = try CohortData.loading(configuration: configuration, report: report)
        teacher = teacherRunner
        let box = LogBox()
        peerLog = box
        let data = data
        computes = try (0..<configuration.peers.count).map { rank in
            let compute = try PeerCompute(configuration: configuration, rank: rank, data: data, teacherFeatureCount: teacherRunner?.model.featureCount,
                                          host: "inproc", log: { record in
                                              // Warnings, errors and the test-set evaluation's progress.
                                              if record.level >= .warning {
                                                  box.report("\(record.level == .error ? "error" : "warning"): peer \(rank): \(record.message)")
                                              } else if record.message.contains("evaluating on the test set") {
                                                  box.report("peer \(rank): \(record.message)")
                                              }
                                          })
            return compute
        }
        peers = computes.map(\.trainer)
    }

    /// Trains every epoch; writes per-peer metrics and checkpoints, the cohort's metrics, states and summary.
    /// - Parameters:
    ///   - resume: continue from the newest cohort checkpoint (refused when the run was started with
    ///     other settings); the logs are cut back to that step, so each stays one history.
    ///   - shouldStop: asked between steps; when it returns true every peer writes a checkpoint at the
    ///     step reached and ``CohortStopped`` is thrown (continue with `resume`).
    public func run(resume: Bool = false, shouldStop: () -> Bool = { false },
                    progress: ProgressReporter = ProgressReporter()) throws -> CohortSummary {
        let out = configuration.output
        peerLog.report = progress.log
        var (saved, skipped) = resume ? CoordinatorState.readable(output: out) : ([], [])
        for s in skipped { progress.log("warning: passed over a cohort checkpoint: \(s)") }
        if let state = saved.last { try configuration.checkUnchanged(since: state.settings) }
        if resume { for compute in computes { try compute.restore() } }
        if resume, saved.isEmpty, computes.contains(where: { $0.done > 0 }) {
            // A run from before the in-process cohort wrote the coordinator's states: it resumes, as then, at
            // the newest step every peer has a checkpoint of.
            let missing = computes.filter { $0.done == 0 }.map { "peer \($0.rank)" }
            guard missing.isEmpty else { throw ResumeError.inconsistent("some peers have no checkpoint (\(missing.joined(separator: ", ")))") }
            var state = CoordinatorState()
            state.globalStep = computes.map(\.done).min()!
            state.evaluatedEpochs = state.globalStep / data.stepsPerEpoch
            state.lastEvaluation = Array(repeating: nil, count: computes.count)
            state.settings = configuration.canonicalSettings
            saved = [state]
        }
        var teacherTop1 = saved.last?.teacherTop1
        if teacherTop1 == nil, let teacher {
            let phase = PhaseProgress("evaluating the teacher (\(configuration.teacher!.model)) on the test set", total: data.testSet.count,
                                      report: progress.log)
            teacherTop1 = evaluate(teacher.model, on: data.testSet, batchSize: configuration.evaluationBatchSize, progress: phase).top1
            phase.finish(String(format: "test top-1 %.2f%%", 100 * teacherTop1!))
        }
        let hub = InMemoryHub(peers: computes.count)
        var core = CoordinatorCore(configuration: configuration, stepsPerEpoch: data.stepsPerEpoch, trainCount: data.trainSet.count,
                                   testLabels: data.testSet.labels, timing: .reliable, savedStates: saved, teacherTop1: teacherTop1,
                                   host: "inproc", transport: "inproc")
        core.resumeRequested = resume
        let coordinator = CoordinatorDriver(core: core, transport: hub.coordinatorEnd(), data: data, teacher: teacher,
                                            directory: try CohortRunDirectory(output: out))
        coordinator.log = { record in
            // The cohort's lines; admission and phase chatter stays out of a one-process run's output.
            guard record.level >= .warning || record.message.hasPrefix("epoch ") || record.message.hasPrefix("resumed")
                    || record.message.hasPrefix("continuing") || record.message.hasPrefix("cohort of") else { return }
            progress.log((record.level >= .warning ? "\(record.level == .error ? "error" : "warning"): " : "") + record.message)
        }
        coordinator.progress = { line, final in progress.line(line, final: final) }
        if let settings = configuration.teacher, teacherAhead > 0 {
            coordinator.teacherPipeline = TeacherPipeline(settings: settings, data: data, epochs: configuration.epochs, depth: teacherAhead)
        }
        defer { coordinator.teacherPipeline?.stop() }
        let drivers = computes.map { compute in
            PeerDriver(core: PeerCore(configuration: configuration, rank: compute.rank, sampler: data.sampler,
                                      teacherFeatureCount: teacher?.model.featureCount, timing: .reliable, done: compute.done, host: "inproc",
                                      endpoint: "inproc", dataEndpoint: InMemoryHub.dataEndpoint(rank: compute.rank)),
                       transport: hub.peerEnd(rank: compute.rank), work: InlinePeerWork(compute))
        }
        let peerLog = self.peerLog
        for (rank, driver) in drivers.enumerated() {
            driver.log = { record in
                // A stop the cohort asked for is reported once, by the cohort.
                guard record.level >= .warning, !record.message.hasPrefix("stopped by the coordinator") else { return }
                peerLog.report("\(record.level == .error ? "error" : "warning"): peer \(rank): \(record.message)")
            }
        }
        // The peers' statuses reach the coordinator (its progress line shows each peer's loss and accuracy);
        // their records are printed here, not forwarded.
        for driver in drivers { driver.logBatch = { status, _ in status.map { Message.LogBatch(records: [], status: $0) } } }
        let started = wallClock()
        coordinator.handle(.start, now: started)
        for driver in drivers { try driver.handle(.start, now: started) }
        try withoutActuallyEscaping(shouldStop) { shouldStop in
            coordinator.stopsBeforeStep = shouldStop
            defer { coordinator.stopsBeforeStep = { false } }
            try runUntilDone(coordinator, drivers)
        }
        switch coordinator.outcome! {
        case .finished(let summary): return summary
        case .stopped(let step, _): throw CohortStopped(globalStep: step, atOwnSteps: configuration.codistillation != nil)
        case .failed(.resume(let error)): throw error
        case .failed(let error): throw error
        }
    }

    /// Pumps the coordinator and the peers until all are done; throws a peer's failure at once.
    private func runUntilDone(_ coordinator: CoordinatorDriver, _ drivers: [PeerDriver]) throws {
        while !coordinator.isDone || drivers.contains(where: { !$0.isDone }) {
            let now = wallClock()
            var happened = try coordinator.pump(now: now)
            for driver in drivers {
                happened = try driver.pump(now: now) || happened
                if case .failed(let error)? = driver.outcome {
                    if case .stopped = error {} else { throw Self.underlying(error) }
                }
            }
            if !happened { Thread.sleep(forTimeInterval: 0.001) }
        }
    }

    /// The error a peer's failure wraps (a divergence, say), as the single process reports it.
    private static func underlying(_ error: PeerError) -> any Error {
        if case .diverged(let e) = error { return e }
        return error
    }
}

/// The in-process cohort stopped when asked (a signal), after every peer wrote a checkpoint at `globalStep`.
public struct CohortStopped: Error, CustomStringConvertible {
    public let globalStep: Int
    /// Codistilling peers each checkpoint at their own step.
    public var atOwnSteps = false
    public init(globalStep: Int, atOwnSteps: Bool = false) { self.globalStep = globalStep; self.atOwnSteps = atOwnSteps }
    public var description: String {
        atOwnSteps ? "stopped; every peer wrote a checkpoint at its own step" : "stopped at step \(globalStep); every peer wrote a checkpoint there"
    }
}

/// "epoch 2/3: peer 0 (resnet8) 88.10%, peer 1 (resnet8) 87.95%; ensemble 89.02%"
public func epochReport(epoch: Int, configuration: CohortConfiguration, evaluation: CohortEvaluation) -> String {
    let perPeer = configuration.peers.enumerated().map { rank, peer in
        evaluation.peers[rank].count == 0 ? "peer \(rank) (\(peer.model)) absent"
            : String(format: "peer %d (%@) %.2f%%", rank, peer.model, 100 * evaluation.peers[rank].top1)
    }
    return String(format: "epoch %d/%d: %@; ensemble %.2f%%", epoch + 1, configuration.epochs, perPeer.joined(separator: ", "), 100 * evaluation.ensembleTop1)
}
