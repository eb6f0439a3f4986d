import Foundation
import Testing
import Training
import Wire
@testable import Runtime

/// Codistillation driven with a fake clock: the coordinator starts each peer once and scores the epochs as
/// the peers' logits come; each peer steps on its own, against copies of the others updated with the
/// weights they publish every `every` steps.
@Suite struct CodistillationTests {
    /// Three peers, four steps an epoch, two epochs, weights every 2 steps.
    static func configuration(_ extra: String = "") throws -> CohortConfiguration {
        try protocolConfiguration("network: {exchange: mesh}\ncodistillation: {every: 2}\n" + extra)
    }

    static func weights(from rank: Int, step: Int, user: String? = nil) -> PeerCore.Event {
        .peerData(.weights(.init(rank: rank, globalStep: step), tensors: [TensorPayload(name: "model.fc.bias", shape: [10], values: Array(repeating: Float(rank), count: 10))]),
                  user: user)
    }

    // MARK: A peer

    /// Answers the codistillation step under way (with weights when asked).
    static func finishStep(_ p: inout PeerHarness) -> (Message.Step, [PeerWeights], Bool)? {
        guard case .codistill(let step, let copies, let publish, _)? = p.work.last else { return nil }
        p.handle(.done(.codistilled(step, status: p.status(step.globalStep + 1), weights: publish ? [TensorPayload(name: "model.fc.bias", shape: [10], values: Array(repeating: 1, count: 10))] : nil)))
        return (step, copies, publish)
    }

    @Test func aPeerStepsOnItsOwnFromWhereTheCoordinatorSays() throws {
        var p = PeerHarness(try Self.configuration())
        p.join()
        p.handle(.received(.step(PeerHarness.meshStep(0, attempt: 5), teacher: [])))
        var steps: [Int] = []
        var published: [Int] = []
        for _ in 0..<4 {
            let before = p.published.count
            guard let (step, _, publish) = Self.finishStep(&p) else { Issue.record("no step after \(steps)"); return }
            steps.append(step.globalStep)
            if publish { published.append(step.globalStep) }
            #expect(p.published.count == before + (publish ? 1 : 0))
        }
        #expect(steps == [0, 1, 2, 3] && published == [1, 3], "the weights after every second step")
        guard case (.weights(let w, _), let targets)? = p.published.last else { Issue.record("no weights"); return }
        #expect(w.rank == 0 && w.globalStep == 4 && targets.map(\.rank) == [1, 2])
        // The epoch's end: the test set, the line and checkpoint, the logits to the coordinator; then on.
        guard case .evaluate(let e)? = p.work.last else { Issue.record("no evaluation at the epoch's end"); return }
        #expect(e.epoch == 0 && e.globalStep == 4)
        p.handle(.done(.evaluated(e, logits: Array(repeating: 0, count: 40), test: EvaluationResult(top1: 0.5, top5: 1, loss: 1, count: 4))))
        guard case .endEpoch? = p.work.last else { Issue.record("no epoch end"); return }
        p.handle(.done(.epochEnded(e)))
        #expect(p.sent.contains { if case .evaluation(let body, _) = $0 { body.epoch == 0 } else { false } })
        guard case .codistill(let next, _, _, _)? = p.work.last else { Issue.record("no next step"); return }
        #expect(next.globalStep == 4 && p.reconnects == 0)
    }

    @Test func theOthersWeightsGoIntoTheNextStepNewestFirstStrangersDropped() throws {
        var p = PeerHarness(try Self.configuration())
        p.join()
        p.handle(Self.weights(from: 1, step: 2))  // before the start: kept
        p.handle(.received(.step(PeerHarness.meshStep(0, attempt: 5), teacher: [])))
        guard case .codistill(_, let first, _, _)? = p.work.last else { Issue.record("no step"); return }
        #expect(first.map(\.rank) == [1] && first[0].globalStep == 2)
        p.handle(Self.weights(from: 2, step: 4))
        p.handle(Self.weights(from: 2, step: 6))  // newer: replaces the step-4 weights
        p.handle(Self.weights(from: 0, step: 6))  // this peer's own rank
        p.handle(Self.weights(from: 1, step: 6, user: "peer-2"))  // another peer's key
        #expect(p.logs.filter { $0.message == "dropped weights from the mesh" }.count == 2)
        _ = Self.finishStep(&p)
        guard case .codistill(_, let second, _, _)? = p.work.last else { Issue.record("no second step"); return }
        #expect(second.map(\.rank) == [2] && second[0].globalStep == 6)
        _ = Self.finishStep(&p)
        guard case .codistill(_, let third, _, _)? = p.work.last else { Issue.record("no third step"); return }
        #expect(third.isEmpty, "each copy is updated once")
    }

    @Test func afterTheLastStepThePeerWaitsForTheCoordinatorsEnd() throws {
        var p = PeerHarness(try Self.configuration("checkpoint_every: 2\nevaluation_every: 2"), done: 5)
        p.join()
        p.handle(.received(.step(PeerHarness.meshStep(5, attempt: 1), teacher: [])))
        #expect(Self.finishStep(&p)?.0.globalStep == 5)
        guard case .checkpoint(let c)? = p.work.last else { Issue.record("no checkpoint at step 6"); return }
        #expect(c.globalStep == 6)
        p.handle(.done(.checkpointed(c)))
        #expect(Self.finishStep(&p)?.0.globalStep == 6)
        #expect(Self.finishStep(&p)?.0.globalStep == 7)
        guard case .evaluate(let e)? = p.work.last else { Issue.record("no evaluation after the last step"); return }
        #expect(e.epoch == 1 && e.evaluatesTestSet)
        p.handle(.done(.evaluated(e, logits: Array(repeating: 0, count: 40), test: EvaluationResult(top1: 0.5, top5: 1, loss: 1, count: 4))))
        p.handle(.done(.epochEnded(e)))
        let work = p.work.count
        p.handle(.timer(.check), after: 1)
        #expect(p.work.count == work && p.outcome == nil, "nothing more until the coordinator ends the run")
        p.handle(.received(.shutdown(.init(.finished))))
        guard case .finished? = p.outcome else { Issue.record("not finished"); return }
    }

    @Test func aPeerThatLosesTheCoordinatorWaitsForItToSayWhereToGoOn() throws {
        var p = PeerHarness(try Self.configuration())
        p.join()
        p.handle(.received(.step(PeerHarness.meshStep(0, attempt: 5), teacher: [])))
        _ = Self.finishStep(&p)
        p.handle(.timer(.check), after: 11)
        #expect(p.reconnects == 0, "still computing")
        _ = Self.finishStep(&p)
        #expect(p.reconnects == 1 && p.core.done == 2)
        let work = p.work.count
        p.handle(.received(.welcome(.init(accepted: true, session: 9))))
        #expect(p.work.count == work, "no step before the coordinator's")
        p.handle(.received(.step(PeerHarness.meshStep(2, attempt: 8), teacher: [])))
        guard case .codistill(let s, _, _, _)? = p.work.last else { Issue.record("no step"); return }
        #expect(s.globalStep == 2)
    }

    @Test func membersTellWhereTheOthersReceiveNow() throws {
        var p = PeerHarness(try Self.configuration())
        p.join()
        p.handle(.received(.step(PeerHarness.meshStep(0, attempt: 5, ranks: [0, 1]), teacher: [])))
        p.handle(.received(.members(.init(endpoints: ["tcp://host0:6000", "tcp://host1:6000", "tcp://host2:7000"]))))
        _ = Self.finishStep(&p)
        _ = Self.finishStep(&p)
        guard case (.weights, let targets)? = p.published.last else { Issue.record("no weights"); return }
        #expect(targets == [.init(rank: 1, endpoint: "tcp://host1:6000"), .init(rank: 2, endpoint: "tcp://host2:7000")])
    }

    // MARK: The coordinator

    static func evaluation(_ rank: Int, epoch: Int, correct: Int) -> CoordinatorCore.Event {
        var logits = [Float](repeating: 0, count: 4 * 10)
        for i in 0..<4 { logits[i * 10 + (i < correct ? protocolTestLabels[i] : 9)] = 5 }
        return .received(.evaluation(.init(rank: rank, epoch: epoch), tensors: [TensorPayload(name: "logits", shape: [4, 10], values: logits)]),
                         from: CoordinatorHarness.connection(rank), user: nil)
    }

    @Test func theCoordinatorStartsEachPeerOnceAndScoresEpochsAsTheLogitsCome() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2], resumeSteps: [2: 3])
        #expect(c.preparedSteps.isEmpty, "no step barrier")
        for r in 0..<3 {
            let steps = c.sent(to: r).compactMap { if case .step(let s, _) = $0 { s } else { nil } }
            #expect(steps.count == 1 && steps[0].globalStep == (r == 2 ? 3 : 0) && steps[0].endpoints?.count == 3, "peer \(r): \(steps)")
        }
        c.handle(Self.evaluation(0, epoch: 0, correct: 4))
        c.handle(Self.evaluation(2, epoch: 0, correct: 2))
        #expect(c.savedStates.isEmpty, "epoch 1 waits for peer 1's logits")
        c.beat([0, 2])
        c.handle(Self.evaluation(1, epoch: 0, correct: 3))
        #expect(c.savedStates.last?.evaluatedEpochs == 1 && c.core.state.lastEvaluation.map { $0?.top1 } == [1, 0.75, 0.5])
        for r in 0..<3 { c.handle(Self.evaluation(r, epoch: 1, correct: 4)) }
        guard case .finished(let summary)? = c.outcome else { Issue.record("not finished"); return }
        #expect(summary.steps == 8 && summary.ensemble_top1 == 1)
        #expect((0..<3).allSatisfy { r in c.sent(to: r).contains { if case .shutdown(let s) = $0 { s.cause == .finished } else { false } } })
    }

    @Test func anAbsentPeerIsNotAwaitedAndOneBackIsStartedWhereItIs() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2])
        c.tick(after: 6)
        c.beat([0, 1])
        c.tick(after: 6)
        #expect(c.core.membership == [.present, .present, .absent])
        c.handle(Self.evaluation(0, epoch: 0, correct: 4))
        c.handle(Self.evaluation(1, epoch: 0, correct: 4))
        #expect(c.savedStates.last?.evaluatedEpochs == 1, "scored without the absent peer")
        c.hello(2, incarnation: 1, resumeStep: 4)
        let restarted = c.sent(to: 2, incarnation: 1).compactMap { if case .step(let s, _) = $0 { s } else { nil } }
        #expect(restarted.map(\.globalStep) == [4])
        for r in [0, 1] {
            guard case .members(let m)? = c.sent(to: r).last else { Issue.record("peer \(r) not told"); return }
            #expect(m.endpoints[2] == CoordinatorHarness.dataEndpoint(2, incarnation: 1))
        }
    }

    @Test func aCoordinatorWithoutPeersForTheJoinTimeoutFails() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2])
        c.tick(after: 11)
        #expect(c.core.membership.allSatisfy { $0 == .absent })
        c.tick(after: 299)
        #expect(c.outcome == nil)
        c.tick(after: 2)
        guard case .failed(.nobodyPresent)? = c.outcome else { Issue.record("\(String(describing: c.outcome))"); return }
    }

    @Test func epochsAPeerCameBackPastAreScoredWithoutItsLostLogits() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2])
        c.tick(after: 6)
        c.beat([0, 1])
        c.tick(after: 6)
        // Peer 2's logits of epoch 1 were lost with its connection; it is back with 5 steps trained.
        c.hello(2, incarnation: 1, resumeStep: 5)
        #expect(c.core.membership == [.present, .present, .present])
        c.handle(Self.evaluation(0, epoch: 0, correct: 4))
        c.handle(Self.evaluation(1, epoch: 0, correct: 4))
        #expect(c.savedStates.last?.evaluatedEpochs == 1, "peer 2 is past epoch 1's end and is not awaited for it")
        // Epoch 2 awaits it again.
        c.handle(Self.evaluation(0, epoch: 1, correct: 4))
        c.handle(Self.evaluation(1, epoch: 1, correct: 4))
        #expect(c.outcome == nil)
        c.handle(.received(.evaluation(.init(rank: 2, epoch: 1), tensors: [TensorPayload(name: "logits", shape: [4, 10], values: Array(repeating: 0, count: 40))]),
                           from: CoordinatorHarness.connection(2, incarnation: 1), user: nil))
        guard case .finished? = c.outcome else { Issue.record("\(String(describing: c.outcome))"); return }
    }

    /// A peer back from a checkpoint behind the epochs already scored without it goes on from there.
    @Test func aPeerBackBehindTheScoredEpochsIsStartedWhereItIs() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2])
        c.tick(after: 6)
        c.beat([0, 1])
        c.tick(after: 6)
        c.handle(Self.evaluation(0, epoch: 0, correct: 4))
        c.handle(Self.evaluation(1, epoch: 0, correct: 4))
        #expect(c.savedStates.last?.evaluatedEpochs == 1)
        c.hello(2, incarnation: 1, resumeStep: 2)
        let restarted = c.sent(to: 2, incarnation: 1).compactMap { if case .step(let s, _) = $0 { s } else { nil } }
        #expect(restarted.map(\.globalStep) == [2] && c.outcome == nil)
    }

    /// Stopped and resumed after the peers passed an epoch's end whose logits nobody delivered: that epoch
    /// ends unscored and the run goes on (it used to wait for it for ever).
    @Test func anEpochEveryPeerIsPastWithoutItsLogitsEndsUnscored() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2], resumeSteps: [0: 5, 1: 6, 2: 5])
        #expect(c.savedStates.last?.evaluatedEpochs == 1 && c.logged("epoch 1 ends unscored"))
        for r in 0..<3 { c.handle(Self.evaluation(r, epoch: 1, correct: 4)) }
        guard case .finished? = c.outcome else { Issue.record("\(String(describing: c.outcome))"); return }
    }

    @Test func theLastEpochWaitsForAbsentPeersThenEndsWithoutThem() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2])
        for r in 0..<3 { c.handle(Self.evaluation(r, epoch: 0, correct: 4)) }
        c.tick(after: 6)
        c.beat([0, 1])
        c.tick(after: 6)
        #expect(c.core.membership[2] == .absent)
        guard case .members(let m)? = c.sent(to: 0).last else { Issue.record("the others are not told"); return }
        #expect(m.endpoints[2].isEmpty && !m.endpoints[0].isEmpty)
        c.handle(Self.evaluation(0, epoch: 1, correct: 4))
        c.handle(Self.evaluation(1, epoch: 1, correct: 4))
        #expect(c.outcome == nil, "the last epoch awaits the absent peer")
        for _ in 0..<30 {
            c.tick(after: 9)
            c.beat([0, 1])
        }
        c.tick(after: 31)
        guard case .finished(let summary)? = c.outcome else { Issue.record("\(String(describing: c.outcome))"); return }
        #expect(summary.peers.count == 3)
    }

    @Test func aStopAsksEveryPeerToCheckpointAtItsOwnStep() throws {
        var c = CoordinatorHarness(try Self.configuration())
        _ = c.admit([0, 1, 2])
        #expect(c.core.isCodistilling)
        c.handle(.stop(.checkpointAndStop(signal: 2)))
        for r in 0..<3 {
            let sent = c.sent(to: r)
            guard sent.count >= 2, case .checkpoint = sent[sent.count - 2], case .shutdown = sent[sent.count - 1] else {
                Issue.record("peer \(r): \(sent)"); return
            }
        }
        guard case .stopped(_, let signal)? = c.outcome else { Issue.record("\(String(describing: c.outcome))"); return }
        #expect(signal == 2)
        // A peer checkpoints at its own step without a warning, then stops.
        var p = PeerHarness(try Self.configuration())
        p.join()
        p.handle(.received(.step(PeerHarness.meshStep(0, attempt: 5), teacher: [])))
        p.handle(.received(.checkpoint(.init(globalStep: 0))))
        p.handle(.received(.shutdown(.init(.failed("coordinator: stopped")))))
        _ = Self.finishStep(&p)
        guard case .checkpoint? = p.work.last else { Issue.record("no checkpoint: \(p.work)"); return }
        p.handle(.done(.checkpointed(.init(globalStep: 0))))
        guard case .failed(.stopped)? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
        #expect(!p.logged("checkpoint written at this peer's own step"))
    }

    @Test func endpointListsOfTheWrongLengthAreDropped() throws {
        var p = PeerHarness(try Self.configuration())
        p.join()
        let short = PeerHarness.step(0).forMesh(attempt: 1, endpoints: ["tcp://a:1"])
        p.handle(.received(.step(short, teacher: [])))
        p.handle(.received(.members(.init(endpoints: Array(repeating: "tcp://a:1", count: 9)))))
        #expect(p.work.isEmpty && p.logs.filter { $0.level == .warning }.count == 2)
    }

    // MARK: The configuration

    @Test func codistillationNeedsTheMeshAndNoTeacher() throws {
        let error = #expect(throws: ConfigurationError.self) { try protocolConfiguration("codistillation: {every: 2}") }
        #expect("\(error.map { "\($0)" } ?? "")".contains("network.exchange"))
        let teacher = #expect(throws: ConfigurationError.self) {
            try protocolConfiguration("network: {exchange: mesh}\ncodistillation: {}\nteacher: {model: resnet8, checkpoint: /nonexistent}")
        }
        #expect("\(teacher.map { "\($0)" } ?? "")".contains("teacher"))
        #expect(try Self.configuration().codistillation?.every == 2)
        #expect(try Self.configuration().canonicalSettings.contains("codistillation.every=2"))
        #expect(!(try protocolConfiguration("network: {exchange: mesh}").canonicalSettings.contains("codistillation")))
        // Each peer decides which epochs it evaluates: they must agree.
        #expect(try Self.configuration().canonicalSettings.contains("evaluation_every=1"))
        #expect(!(try protocolConfiguration("network: {exchange: mesh}").canonicalSettings.contains("evaluation_every")))
    }
}
