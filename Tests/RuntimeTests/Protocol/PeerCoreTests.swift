import Foundation
import Testing
import Training
import Wire
@testable import Runtime

/// A peer's protocol driven with a fake clock and no sockets: joining and each way it fails, heartbeats,
/// a step's messages and work, losing the coordinator (idle, waiting, computing), rewinding, the epoch's
/// end, checkpoints, shutdown.
@Suite struct PeerCoreTests {
    @Test func joinsWithAHelloThenBeatsWithItsSession() throws {
        var p = PeerHarness(try protocolConfiguration(), rank: 1, done: 3)
        p.handle(.start)
        guard case .hello(let hello)? = p.sent.first else { Issue.record("no hello"); return }
        #expect(hello.rank == 1 && hello.model == "resnet8" && hello.resumeStep == 3)
        p.handle(.timer(.heartbeat))
        guard case .heartbeat(let before)? = p.sent.last else { Issue.record("no beat"); return }
        #expect(before.session == nil && before.rank == 1, "no session to vouch for while joining")
        p.handle(.received(.welcome(.init(accepted: true, session: 99))))
        #expect(p.logged("joined the cohort") && p.core.session == 99)
        p.handle(.timer(.heartbeat), after: 1)
        guard case .heartbeat(let after)? = p.sent.last else { Issue.record("no beat"); return }
        #expect(after.session == 99 && after.sequence == before.sequence + 1)
        #expect(p.actions.contains { if case .schedule(.heartbeat, let at) = $0 { at == p.now + 1 } else { false } })
    }

    @Test func saysHelloAgainUntilAnswered() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.handle(.start)
        p.handle(.timer(.hello), after: 2)
        p.handle(.timer(.hello), after: 2)
        #expect(p.hellos == 3)
        p.handle(.received(.welcome(.init(accepted: true, session: 1))))
        p.handle(.timer(.hello), after: 2)
        #expect(p.hellos == 3, "no hello once joined")
    }

    @Test func aRefusalEndsThePeerWithTheReason() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.handle(.start)
        p.handle(.received(.welcome(.init(accepted: false, reason: "rank 0 runs resnet20 in this cohort, not resnet8"))))
        guard case .failed(.refused(let reason))? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
        #expect(reason == "rank 0 runs resnet20 in this cohort, not resnet8")
    }

    @Test func aCoordinatorWithAnotherConfigurationEndsThePeer() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.handle(.start)
        p.handle(.invalid(.header("noise")))
        #expect(p.outcome == nil)
        p.handle(.invalid(.configuration(expected: "a", found: "b")))
        guard case .failed(.otherConfiguration)? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
    }

    @Test func noCoordinatorWithinTheJoinTimeoutEndsThePeerAfterSayingSo() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.handle(.start)
        p.handle(.timer(.check), after: 10)
        #expect(p.logged("no answer from the coordinator yet"))
        p.handle(.timer(.check), after: 289)
        #expect(p.outcome == nil)
        p.handle(.timer(.check), after: 2)
        guard case .failed(.noCoordinator(let endpoint, let seconds))? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
        #expect(endpoint == "tcp://test:1" && seconds == 300)
    }

    @Test func aStepIsAForwardPassTheOutputsTheOthersAndTheRest() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])), after: 0.5)
        guard case .forward(let s, nil)? = p.work.last else { Issue.record("no forward"); return }
        #expect(s.globalStep == 0)
        let outputs = [TensorPayload(name: "logits", shape: [4, 10], values: Array(repeating: 1, count: 40))]
        p.handle(.done(.forwarded(s, outputs: outputs)), after: 0.1)
        guard case .outputs(let body, let sent)? = p.sent.last else { Issue.record("no outputs"); return }
        #expect(body.rank == 0 && body.globalStep == 0 && sent == outputs)
        p.handle(.received(p.others(0, ranks: [1, 2])), after: 1)
        guard case .finish(_, let others, nil, let timing)? = p.work.last else { Issue.record("no finish"); return }
        #expect(others.map(\.rank) == [1, 2] && others.allSatisfy { $0.logits.count == 40 && $0.embedding?.count == 32 })
        #expect(timing.idle == 0.5 && timing.waited == 0.25 && abs(timing.exchange - 0.75) < 1e-9)
        p.handle(.done(.finished(s, status: p.status(1))))
        #expect(p.core.done == 1)
        #expect(p.actions.contains { if case .flushLogs(let status?, nil) = $0 { status.globalStep == 1 } else { false } })
    }

    @Test func aStepWithMalformedTeacherOutputsIsDropped() throws {
        var p = PeerHarness(try protocolConfiguration(), teacherFeatureCount: 64)
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [TensorPayload(name: "feature", shape: [4, 3], values: Array(repeating: 0, count: 12))])))
        #expect(p.work.isEmpty && p.logged("dropped a step with invalid teacher outputs"))
        #expect(p.outcome == nil)
    }

    @Test func aStepThatDoesNotFitTheScheduleEndsThePeer() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(Message.Step(epoch: 0, step: 2, globalStep: 7), teacher: [])))
        guard case .failed(.outOfStep(let why))? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
        #expect(why.contains("does not fit 2 epochs of 4 steps"))
        #expect(p.sent.contains { if case .shutdown = $0 { true } else { false } }, "the coordinator is told")
    }

    @Test func malformedOthersAreDroppedAndTheStepStillAwaited() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])))
        p.handle(.done(.forwarded(PeerHarness.step(0), outputs: [])))
        // Ranks must be other members, ascending, each once.
        p.handle(.received(p.others(0, ranks: [2, 1])))
        p.handle(.received(p.others(0, ranks: [0, 1])))
        #expect(p.logs.filter { $0.message == "dropped invalid others" }.count == 2)
        p.handle(.received(p.others(0, ranks: [1, 2], batch: 3)))
        #expect(p.logs.filter { $0.message == "dropped invalid others" }.count == 3 && p.work.count == 1)
        p.handle(.received(p.others(0, ranks: [1, 2])))
        guard case .finish? = p.work.last else { Issue.record("no finish"); return }
    }

    @Test func aStepBehindItsStateIsTrainedAfterGoingBackToItsCheckpoint() throws {
        var p = PeerHarness(try protocolConfiguration(), done: 6)
        p.join()
        p.handle(.received(.step(PeerHarness.step(4), teacher: [])))
        guard case .rewind(let to)? = p.work.last else { Issue.record("no rewind"); return }
        #expect(to == 4 && p.work.count == 1)
        p.handle(.done(.rewound(to: 4)))
        #expect(p.core.done == 4 && p.logged("went back to the cohort's step"))
        guard case .forward(let s, _)? = p.work.last else { Issue.record("no forward after the rewind"); return }
        #expect(s.globalStep == 4)
    }

    @Test func aStepAheadOfItsStateIsTakenWithAWarning() throws {
        var p = PeerHarness(try protocolConfiguration(), done: 1)
        p.join()
        p.handle(.received(.step(PeerHarness.step(3), teacher: [])))
        #expect(p.logged("skipping ahead to the cohort's step"))
        guard case .forward? = p.work.last else { Issue.record("no forward"); return }
    }

    @Test func silenceFromTheCoordinatorMeansRejoiningOnAFreshConnection() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join(session: 5)
        p.handle(.timer(.check), after: 9)
        #expect(p.reconnects == 0)
        p.handle(.received(.heartbeat(.init(rank: nil, sequence: 0))))
        p.handle(.timer(.check), after: 9)
        #expect(p.reconnects == 0, "heartbeat answers count")
        p.handle(.timer(.check), after: 2)
        #expect(p.reconnects == 1 && p.hellos == 2 && p.core.session == nil)
        #expect(p.logs.contains { $0.message == "lost the coordinator; rejoining" && $0.metadata["why"]?.contains("no heartbeat") == true })
    }

    @Test func losingTheCoordinatorWhileComputingRejoinsOnceTheWorkIsDone() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])))
        p.handle(.timer(.check), after: 11)
        #expect(p.reconnects == 0, "not while the forward pass runs")
        p.handle(.done(.forwarded(PeerHarness.step(0), outputs: [])))
        #expect(p.reconnects == 1 && !p.sent.contains { if case .outputs = $0 { true } else { false } }, "the step in flight is dropped")
    }

    @Test func aShutdownThatCameDuringTheForwardPassStopsThePeerWhenItIsDone() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])))
        p.handle(.received(.shutdown(.init(.failed("coordinator: stopped by signal 15")))))
        #expect(p.outcome == nil, "not while the forward pass runs")
        p.handle(.done(.forwarded(PeerHarness.step(0), outputs: [])))
        guard case .failed(.stopped(let reason))? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
        #expect(reason == "coordinator: stopped by signal 15")
    }

    @Test func aCoordinatorHeardAgainBeforeTheWorkEndsIsNotLeft() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])))
        p.handle(.timer(.check), after: 11)
        p.handle(.received(.heartbeat(.init(rank: nil, sequence: 3))), after: 1)
        p.handle(.done(.forwarded(PeerHarness.step(0), outputs: [])))
        #expect(p.reconnects == 0 && p.sent.contains { if case .outputs = $0 { true } else { false } })
    }

    @Test func aCohortThatMovesOnWithoutThePeerMakesItRejoin() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])))
        p.handle(.done(.forwarded(PeerHarness.step(0), outputs: [])))
        p.handle(.received(.step(PeerHarness.step(1), teacher: [])))
        #expect(p.reconnects == 1 && p.logs.contains { $0.metadata["why"]?.contains("the cohort moved on") == true })
    }

    @Test func othersThatNeverComeMakeThePeerRejoinThoughHeartbeatsAreAnswered() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])))
        p.handle(.done(.forwarded(PeerHarness.step(0), outputs: [])))
        for _ in 0..<240 {
            p.handle(.received(.heartbeat(.init(rank: nil, sequence: 0))), after: 1)
            p.handle(.timer(.check))
        }
        #expect(p.reconnects == 0)
        p.handle(.received(.heartbeat(.init(rank: nil, sequence: 0))), after: 1)
        p.handle(.timer(.check))
        #expect(p.reconnects == 1 && p.logs.contains { $0.metadata["why"] == "no others' outputs for step 0" })
    }

    @Test func messagesThatArriveDuringWorkAreHandledAfterIt() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.runStep(0)
        p.handle(.received(.step(PeerHarness.step(1), teacher: [])))
        p.handle(.done(.forwarded(PeerHarness.step(1), outputs: [])))
        p.handle(.received(p.others(1, ranks: [1, 2])))
        // While step 1 finishes, the coordinator already asks for a checkpoint and then step 2.
        p.handle(.received(.checkpoint(.init(globalStep: 2))))
        p.handle(.received(.step(PeerHarness.step(2), teacher: [])))
        guard case .finish? = p.work.last else { Issue.record("work started before the last finished"); return }
        p.handle(.done(.finished(PeerHarness.step(1), status: p.status(2))))
        guard case .checkpoint(let c)? = p.work.last else { Issue.record("no checkpoint"); return }
        #expect(c.globalStep == 2 && !p.logged("checkpoint written at this peer's own step"))
        p.handle(.done(.checkpointed(c)))
        guard case .forward(let s, _)? = p.work.last else { Issue.record("no forward"); return }
        #expect(s.globalStep == 2)
    }

    @Test func anEpochEndWritesTheLineAndCheckpointBeforeSendingTheLogits() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        for g in 0..<4 { p.runStep(g) }
        let e = Message.Evaluate(epoch: 0, globalStep: 4)
        p.handle(.received(.evaluate(e)))
        #expect(p.actions.contains { if case .flushLogs(_, .evaluating) = $0 { true } else { false } })
        guard case .evaluate? = p.work.last else { Issue.record("no evaluation"); return }
        let logits = [Float](repeating: 0, count: 40)
        p.handle(.done(.evaluated(e, logits: logits, test: EvaluationResult(top1: 0.5, top5: 1, loss: 1, count: 4))))
        guard case .endEpoch(_, let test)? = p.work.last else { Issue.record("no epoch end"); return }
        #expect(test?.top1 == 0.5 && !p.sent.contains { if case .evaluation = $0 { true } else { false } })
        p.handle(.done(.epochEnded(e)))
        guard case .evaluation(let body, let tensors)? = p.sent.last else { Issue.record("no logits"); return }
        #expect(body.epoch == 0 && tensors.first?.shape == [4, 10])
        #expect(p.actions.contains { if case .flushLogs(let status?, .waiting) = $0 { status.testAccuracy == 0.5 } else { false } })
    }

    @Test func anEpochEndWithoutATestEvaluationOnlyCheckpoints() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.evaluate(.init(epoch: 0, globalStep: 0, test: false))))
        guard case .endEpoch(_, nil)? = p.work.last else { Issue.record("\(p.work)"); return }
        p.handle(.done(.epochEnded(.init(epoch: 0, globalStep: 0, test: false))))
        #expect(!p.sent.contains { if case .evaluation = $0 { true } else { false } })
    }

    @Test func aCheckpointAtAnotherStepIsWrittenAtItsOwnWithAWarning() throws {
        var p = PeerHarness(try protocolConfiguration(), done: 3)
        p.join()
        p.handle(.received(.checkpoint(.init(globalStep: 5))))
        #expect(p.logged("checkpoint written at this peer's own step"))
        guard case .checkpoint? = p.work.last else { Issue.record("no checkpoint"); return }
    }

    @Test func aRepeatedWelcomeIsTheAnswerToAnEarlierHello() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join(session: 3)
        p.handle(.received(.welcome(.init(accepted: true, session: 3))))
        #expect(!p.logs.contains { $0.level >= .warning } && p.logs.contains { $0.level == .debug })
        p.handle(.received(.welcome(.init(accepted: true, session: 4))))
        #expect(p.logged("dropped an unexpected welcome message"))
    }

    @Test func theCohortsEndAndAStopByTheCoordinatorEndThePeer() throws {
        var finished = PeerHarness(try protocolConfiguration())
        finished.join()
        finished.handle(.received(.shutdown(.init(.finished))))
        guard case .finished? = finished.outcome else { Issue.record("\(String(describing: finished.outcome))"); return }
        var stopped = PeerHarness(try protocolConfiguration())
        stopped.join()
        stopped.handle(.received(.shutdown(.init(.failed("coordinator: stopped by signal 2")))))
        guard case .failed(.stopped(let reason))? = stopped.outcome else { Issue.record("\(String(describing: stopped.outcome))"); return }
        #expect(reason == "coordinator: stopped by signal 2")
        #expect(!stopped.sent.contains { if case .shutdown = $0 { true } else { false } }, "the coordinator is not told what it said")
    }

    @Test func aSignalEndsThePeerAndTellsTheCoordinator() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.stop(signal: 15))
        guard case .failed(.signal(15))? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
        guard case .shutdown(let s)? = p.sent.last else { Issue.record("not told"); return }
        #expect(s.reason == "stopped by signal 15")
        #expect(p.handle(.timer(.heartbeat), after: 1).isEmpty, "nothing after the end")
    }

    @Test func aFailedPieceOfWorkEndsThePeer() throws {
        var p = PeerHarness(try protocolConfiguration())
        p.join()
        p.handle(.received(.step(PeerHarness.step(0), teacher: [])))
        p.handle(.done(.failed(.diverged(DivergenceError(rank: 0, globalStep: 0, steps: 5)))))
        guard case .failed(.diverged)? = p.outcome else { Issue.record("\(String(describing: p.outcome))"); return }
    }
}
