import Foundation
import Testing
import Training
import Wire
@testable import Runtime

/// The coordinator's protocol driven with a fake clock and no sockets: admission and each refusal, rank
/// take-overs, heartbeats, absence and rejoin, delivery deadlines, the epoch's evaluation, the checkpoint
/// cadence, resume, stop and shutdown.
@Suite struct CoordinatorCoreTests {
    // MARK: Admission

    @Test func admitsEveryConfiguredPeerThenPreparesTheFirstStep() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.handle(.start)
        #expect(h.logged("waiting for 3 peer(s)") && h.preparedSteps.isEmpty)
        h.hello(0); h.hello(1)
        #expect(h.preparedSteps.isEmpty, "no step before everyone joined")
        let step = h.admit([2])
        #expect(step == Message.Step(epoch: 0, step: 0, globalStep: 0))
        for r in 0..<3 {
            guard case .welcome(let w)? = h.sent(to: r).first else { Issue.record("no welcome to \(r)"); continue }
            #expect(w.accepted && w.session != nil)
        }
        #expect(Set((0..<3).compactMap { h.session($0) }).count == 3, "a session of its own for each member")
        #expect(h.core.presentRanks == [0, 1, 2] && h.logged("3 of 3 peer(s) joined"))
    }

    @Test func refusesARankOutsideTheCohort() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.handle(.start)
        h.hello(5)
        guard case .welcome(let w)? = h.sent(to: 5).last else { Issue.record("no answer"); return }
        #expect(!w.accepted && w.reason == "rank 5 is not in this cohort of 3 peer(s) (ranks 0...2)")
        #expect(h.core.membership == [.absent, .absent, .absent])
    }

    @Test func refusesAPeerRunningAnotherModel() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.handle(.start)
        h.hello(1, model: "resnet20")
        guard case .welcome(let w)? = h.sent(to: 1).last else { Issue.record("no answer"); return }
        #expect(!w.accepted && w.reason == "rank 1 runs resnet8 in this cohort, not resnet20")
        #expect(h.logs.contains { $0.level == .warning && $0.message == "refused a peer" && $0.sender != nil }, "rate-limited per sender")
    }

    @Test func refusesAConnectionWhoseKeyIsNotTheRanks() throws {
        var configuration = try protocolConfiguration()
        configuration.security = try protocolConfiguration("security: {coordinator_key: c.key, peer_keys: [a.key, b.key, d.key]}").security
        #expect(configuration.security != nil)
        var h = CoordinatorHarness(configuration)
        h.handle(.start)
        h.hello(1, user: "peer-2")
        guard case .welcome(let w)? = h.sent(to: 1).last else { Issue.record("no answer"); return }
        #expect(!w.accepted && w.reason == "this connection's key is not peer 1's")
        h.hello(1, user: "peer-1")
        guard case .welcome(let ok)? = h.sent(to: 1).last else { Issue.record("no answer"); return }
        #expect(ok.accepted)
    }

    @Test func tellsAStrangerWithAnotherConfigurationWhy() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.handle(.start)
        h.handle(.invalid(.configuration(expected: "aaaa", found: "bbbb"), from: [9, 9]))
        guard case .send(.welcome(let w), let to)? = h.actions.last(where: { if case .send = $0 { true } else { false } }) else {
            Issue.record("no answer"); return
        }
        #expect(to == [9, 9] && !w.accepted && w.reason?.contains("configuration digest bbbb differs from this cohort's aaaa") == true)
        // Other malformed messages from strangers get no answer.
        let before = h.actions.count
        h.handle(.invalid(.header("garbage"), from: [9, 8]))
        #expect(!h.actions[before...].contains { if case .send = $0 { true } else { false } })
    }

    @Test func aRepeatedHelloOnTheSameConnectionGetsTheSameSession() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.handle(.start)
        h.hello(0)
        let first = h.session(0)
        h.hello(0, after: 2)
        let welcomes = h.sent(to: 0).compactMap { if case .welcome(let w) = $0 { w.session } else { nil } }
        #expect(welcomes == [first, first] && h.core.membership[0] == .joining)
    }

    @Test func aHelloForARankALiveConnectionHoldsIsIgnored() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        h.hello(1, incarnation: 1, after: 3)
        #expect(h.sent(to: 1, incarnation: 1).isEmpty, "no answer while the holder is alive")
        #expect(h.logged("ignored a hello for rank 1: a live connection holds it"))
        #expect(!h.sent(to: 1).contains { if case .shutdown = $0 { true } else { false } })
    }

    @Test func aSilentHoldersRankIsTakenOverByANewConnection() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        h.hello(1, incarnation: 1, after: 11)
        guard case .shutdown(let s)? = h.sent(to: 1).last else { Issue.record("the old connection is not told"); return }
        #expect(s.reason == "rank 1 was taken over by a new connection")
        guard case .welcome(let w)? = h.sent(to: 1, incarnation: 1).last else { Issue.record("no welcome"); return }
        #expect(w.accepted && w.session != h.session(1))
        #expect(h.logged("peer 1 joined again from a new connection"))
    }

    @Test func joinTimeoutNamesTheMissingPeers() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.handle(.start)
        h.hello(1)
        h.tick(after: 299)
        #expect(h.outcome == nil)
        h.tick(after: 2)
        guard case .failed(.joinTimeout(let missing, let seconds, let endpoint))? = h.outcome else { Issue.record("no join timeout"); return }
        #expect(missing == [0, 2] && seconds == 300 && endpoint == "tcp://test:1")
        guard case .shutdown(let s)? = h.sent(to: 1).last else { Issue.record("the joined peer is not told"); return }
        #expect(s.reason.hasPrefix("coordinator: peer(s) 0, 2 did not join"))
        #expect(h.actions.contains { if case .publish(.end(let e)) = $0 { !e.ok } else { false } })
    }

    // MARK: Heartbeats

    @Test func heartbeatsAreAnsweredForMembersOnly() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        h.handle(.received(.heartbeat(.init(rank: 1, sequence: 4, session: h.session(1))), from: CoordinatorHarness.connection(1), user: nil))
        guard case .heartbeat(let answer)? = h.sent(to: 1).last else { Issue.record("no answer"); return }
        #expect(answer.sequence == 4 && answer.rank == nil)
        // Not a member (never joined, or marked absent): no answer, so it concludes it lost the coordinator and rejoins.
        var k = CoordinatorHarness(try protocolConfiguration())
        k.handle(.start)
        k.handle(.received(.heartbeat(.init(rank: 1, sequence: 4, session: nil)), from: [7], user: nil))
        #expect(k.actions.allSatisfy { if case .send = $0 { false } else { true } })
        // A beat naming a rank outside the cohort is dropped with a warning about its sender.
        k.handle(.received(.heartbeat(.init(rank: 8, sequence: 0, session: nil)), from: [7], user: nil))
        #expect(k.logs.contains { $0.message.hasPrefix("dropped a heartbeat") && $0.sender == "07" })
    }

    @Test func onlyBeatsCarryingTheCurrentSessionKeepAMemberAlive() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let admitted = h.admit([0, 1, 2])
        let step = try #require(admitted)
        h.prepared(step)
        // Peer 2's beats carry a stale session (a process whose rank was taken over): they do not count.
        for _ in 0..<12 {
            h.now += 1
            h.beat([0, 1])
            h.handle(.received(.heartbeat(.init(rank: 2, sequence: 0, session: 12345)), from: CoordinatorHarness.connection(2), user: nil))
            h.tick(after: 0)
        }
        #expect(h.core.membership == [.present, .present, .absent])
        #expect(h.logged("peer 2 is absent: nothing heard for 10 s (network.heartbeat_timeout) while awaiting the outputs of step 0"))
    }

    // MARK: Steps

    @Test func aStepSendsEachPeerTheOthersOutputsAndMovesOn() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let admitted = h.admit([0, 1, 2])
        let step = try #require(admitted)
        h.prepared(step)
        for r in 0..<3 {
            guard case .step(let s, let teacher)? = h.sent(to: r).last else { Issue.record("no step to \(r)"); continue }
            #expect(s == step && teacher.isEmpty)
        }
        h.outputs(0, step: 0); h.outputs(1, step: 0)
        #expect(h.preparedSteps == [0], "not before every output is in")
        let done = h.outputs(2, step: 0, after: 0.5)
        for r in 0..<3 {
            guard case .others(let body, let tensors)? = h.sent(to: r).last else { Issue.record("no others to \(r)"); continue }
            let ranks = [0, 1, 2].filter { $0 != r }
            #expect(body.rank == r && body.globalStep == 0 && body.ranks == ranks)
            #expect(tensors.map(\.name) == ranks.flatMap { o in h.core.configuration.outputLayout.forOthers(rank: o, [TensorPayload(name: "embedding", shape: [4, 8], values: Array(repeating: 0, count: 32)), TensorPayload(name: "logits", shape: [4, 10], values: Array(repeating: 0, count: 40))]).map(\.name) })
        }
        // Peer 2 delivered last: it waited 0 s; the others 0.5 s.
        guard case .others(let last, _)? = h.sent(to: 2).last, case .others(let first, _)? = h.sent(to: 0).last else { return }
        #expect(last.waitSeconds == 0 && first.waitSeconds == 0.5)
        #expect(done.contains { if case .recordStep(1, [0, 1, 2]) = $0 { true } else { false } })
        #expect(h.preparedSteps == [0, 1] && h.core.state.globalStep == 1 && h.core.state.images == 4)
    }

    @Test func whoIsServedFirstRotatesFromStepToStep() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        var firstServed: [Int] = []
        for g in 0..<3 {
            let actions = h.runStep(g, [0, 1, 2])
            let order = actions.compactMap { if case .send(.others(let b, _), _) = $0 { b.rank } else { nil } }
            firstServed.append(order.first!)
        }
        #expect(firstServed == [0, 1, 2])
    }

    @Test func malformedOutputsAreDroppedAndTheirSenderStillAwaited() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let admitted = h.admit([0, 1, 2])
        let step = try #require(admitted)
        h.prepared(step)
        h.outputs(0, step: 0, shape: 3)  // a batch of 3: the tensors' shapes are wrong
        #expect(h.logs.contains { $0.message == "dropped invalid outputs" && $0.metadata["reason"]?.contains("has shape [3, 8], expected [4, 8]") == true })
        // The rank in the body must be the sender's.
        h.handle(.received(.outputs(.init(rank: 2, globalStep: 0), tensors: []), from: CoordinatorHarness.connection(1), user: nil))
        #expect(h.logs.contains { $0.metadata["reason"]?.contains("rank 2 in a message from peer 1") == true })
        // Outputs of another step are unexpected.
        _ = h.outputs(1, step: 7)
        #expect(h.logged("dropped an unexpected outputs message"))
        h.outputs(0, step: 0); h.outputs(1, step: 0); h.outputs(2, step: 0)
        #expect(h.core.state.globalStep == 1)
    }

    @Test func aSilentPeerIsMarkedAbsentAndTheStepGoesOnWithTheOthers() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let admitted = h.admit([0, 1, 2])
        let step = try #require(admitted)
        h.prepared(step)
        h.outputs(0, step: 0); h.outputs(1, step: 0)
        h.beat([0, 1])
        h.tick(after: 5)
        #expect(h.core.membership[2] == .present)
        h.beat([0, 1])
        h.tick(after: 6)
        #expect(h.core.membership == [.present, .present, .absent])
        #expect(h.phases.contains { $0.0 == 2 && $0.1 == .absent })
        guard case .others(let body, _)? = h.sent(to: 0).last else { Issue.record("no others"); return }
        #expect(body.ranks == [1] && h.core.state.globalStep == 1)
        // The next step goes to the present peers only.
        h.prepared(Message.Step(epoch: 0, step: 1, globalStep: 1))
        #expect(!h.sent(to: 2).contains { if case .step(let s, _) = $0 { s.globalStep == 1 } else { false } })
    }

    @Test func aPeerThatDoesNotDeliverInTimeIsMarkedAbsent() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let admitted = h.admit([0, 1, 2])
        let step = try #require(admitted)
        h.prepared(step)
        h.outputs(0, step: 0); h.outputs(1, step: 0)
        for _ in 0..<121 { h.now += 1; h.beat([0, 1, 2]); h.tick(after: 0) }
        #expect(h.core.membership == [.present, .present, .absent])
        #expect(h.logged("peer 2 is absent: it did not deliver the outputs of step 0 within 120 s (network.timeout)"))
    }

    @Test func anAbsentPeerRejoinsAtTheNextStep() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let admitted = h.admit([0, 1, 2])
        let step = try #require(admitted)
        h.prepared(step)
        h.handle(.received(.shutdown(.init(.failed("killed"))), from: CoordinatorHarness.connection(2), user: nil))
        #expect(h.core.membership[2] == .absent && h.logged("peer 2 is absent: it stopped: killed"))
        h.outputs(0, step: 0)
        // It comes back (a new process) while step 0 is still gathered: it joins, and takes part from step 1.
        h.hello(2, incarnation: 1, resumeStep: 0)
        #expect(h.core.membership[2] == .joining && h.logged("peer 2 rejoins at the next step"))
        h.outputs(1, step: 0)
        #expect(h.core.state.globalStep == 1 && h.preparedSteps.last == 1)
        h.prepared(Message.Step(epoch: 0, step: 1, globalStep: 1))
        #expect(h.core.presentRanks == [0, 1, 2])
        #expect(h.sent(to: 2, incarnation: 1).contains { if case .step(let s, _) = $0 { s.globalStep == 1 } else { false } })
    }

    @Test func withEveryParticipantGoneTheStepRunsAgainWhenSomeoneRejoins() throws {
        var h = CoordinatorHarness(try protocolConfiguration(peers: 1))
        let admitted = h.admit([0])
        let step = try #require(admitted)
        h.prepared(step)
        h.handle(.sendFailed(to: CoordinatorHarness.connection(0), error: "host unreachable"))
        #expect(h.core.membership == [.absent] && h.logged("unreachable (host unreachable)"))
        #expect(h.preparedSteps == [0], "nobody to run it with")
        h.hello(0, incarnation: 1, resumeStep: 0, after: 30)
        #expect(h.preparedSteps == [0, 0] && h.core.state.globalStep == 0)
    }

    @Test func withNobodyPresentForTheJoinTimeoutTheRunFails() throws {
        var h = CoordinatorHarness(try protocolConfiguration(peers: 1))
        let admitted = h.admit([0])
        let step = try #require(admitted)
        h.prepared(step)
        h.handle(.received(.shutdown(.init(.failed("gone"))), from: CoordinatorHarness.connection(0), user: nil))
        h.tick(after: 301)
        guard case .failed(.nobodyPresent(let seconds))? = h.outcome else { Issue.record("\(String(describing: h.outcome))"); return }
        #expect(seconds == 300)
    }

    @Test func unknownSendersAndMessagesOutOfTurnAreDroppedWithAWarning() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        h.handle(.received(.outputs(.init(rank: 0, globalStep: 0), tensors: []), from: [42], user: nil))
        #expect(h.logs.contains { $0.message == "dropped a message from an unknown sender" && $0.sender == "2a" })
        h.handle(.received(.checkpoint(.init(globalStep: 3)), from: CoordinatorHarness.connection(0), user: nil))
        #expect(h.logged("dropped an unexpected checkpoint message"))
    }

    @Test func aPeersLogBatchIsPublishedUnderItsAdmittedRankAndHost() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        let record = LogRecord(time: 1, level: "info", rank: 2, host: "liar", label: "cohort.peer", message: "hi")
        let status = PeerHarness(try protocolConfiguration(), rank: 1).status(3)
        h.handle(.received(.log(.init(records: [record], status: status, phase: .evaluating)), from: CoordinatorHarness.connection(1), user: nil))
        let published = h.actions.compactMap { if case .publish(let e) = $0 { e } else { nil } }
        #expect(published.contains { if case .log(let r) = $0 { r.rank == 1 && r.host == "host1" && r.message == "hi" } else { false } })
        #expect(published.contains { if case .status(let s) = $0 { s.rank == 1 } else { false } })
        #expect(h.phases.contains { $0.0 == 1 && $0.1 == .evaluating })
    }

    // MARK: Epoch ends, checkpoints, the end

    @Test func anEpochEndScoresEveryPeerAndTheEnsembleAndSavesTheState() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        for g in 0..<4 { h.runStep(g, [0, 1, 2]) }
        for r in 0..<3 {
            guard case .evaluate(let e)? = h.sent(to: r).last else { Issue.record("no evaluate to \(r)"); continue }
            #expect(e.epoch == 0 && e.globalStep == 4 && e.evaluatesTestSet)
        }
        #expect(h.preparedSteps.last == 3, "no step while the epoch is scored")
        h.evaluation(0, epoch: 0, correct: 4)
        h.evaluation(1, epoch: 0, correct: 2)
        h.evaluation(2, epoch: 0, correct: 0)
        guard case .recordEpoch(0, 4, let evaluation, _)? = h.actions.first(where: { if case .recordEpoch = $0 { true } else { false } }) else {
            Issue.record("no epoch record"); return
        }
        #expect(evaluation.peers.map(\.top1) == [1, 0.5, 0] && evaluation.ensembleTop1 == 0.5)
        #expect(h.logged("epoch 1/2: peer 0 (resnet8) 100.00%, peer 1 (resnet8) 50.00%, peer 2 (resnet8) 0.00%; ensemble 50.00%"))
        #expect(h.savedStates.last?.evaluatedEpochs == 1 && h.savedStates.last?.globalStep == 4)
        #expect(h.preparedSteps.last == 4)
    }

    @Test func epochsNotEvaluatedEndWithACheckpointOnly() throws {
        var h = CoordinatorHarness(try protocolConfiguration("evaluation_every: 2"))
        h.admit([0, 1, 2])
        for g in 0..<4 { h.runStep(g, [0, 1, 2]) }
        guard case .evaluate(let e)? = h.sent(to: 1).last else { Issue.record("no evaluate"); return }
        #expect(!e.evaluatesTestSet && h.preparedSteps.last == 4, "the next step at once")
        #expect(h.savedStates.last?.evaluatedEpochs == 1 && h.logged("epoch 1/2 done (evaluated every 2 epochs)"))
    }

    @Test func checkpointEveryAsksEveryMemberToCheckpointAtTheSameStep() throws {
        var h = CoordinatorHarness(try protocolConfiguration("checkpoint_every: 2"))
        h.admit([0, 1, 2])
        h.runStep(0, [0, 1, 2])
        #expect(h.savedStates.isEmpty)
        h.runStep(1, [0, 1, 2])
        for r in 0..<3 {
            guard case .checkpoint(let c)? = h.sent(to: r).last else { Issue.record("no checkpoint to \(r)"); continue }
            #expect(c.globalStep == 2)
        }
        #expect(h.savedStates.map(\.globalStep) == [2] && h.logged("checkpoint at step 2"))
    }

    @Test func theLastEpochWaitsForAbsentPeersBeforeItIsScored() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        for g in 0..<4 { h.runStep(g, [0, 1, 2]) }
        for r in 0..<3 { h.evaluation(r, epoch: 0, correct: 1) }
        h.runStep(4, [0, 1, 2])
        h.handle(.received(.shutdown(.init(.failed("oom"))), from: CoordinatorHarness.connection(2), user: nil))
        for g in 5..<8 { h.runStep(g, [0, 1]) }
        #expect(!h.sent(to: 0).contains { if case .evaluate(let e) = $0 { e.epoch == 1 } else { false } }, "peer 2 is awaited")
        h.hello(2, incarnation: 1, resumeStep: 8, after: 20)
        #expect(h.sent(to: 2, incarnation: 1).contains { if case .evaluate(let e) = $0 { e.epoch == 1 } else { false } })
    }

    @Test func aPeerBackWithOlderWeightsJoinsAfterTheEpochsEndNotAtIt() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        h.runStep(0, [0, 1, 2])
        h.handle(.received(.shutdown(.init(.failed("partitioned"))), from: CoordinatorHarness.connection(2), user: nil))
        h.runStep(1, [0, 1]); h.runStep(2, [0, 1])
        // Back during step 3 with the one step its state trained.
        h.prepared(Message.Step(epoch: 0, step: 3, globalStep: 3))
        h.hello(2, incarnation: 1, resumeStep: 1)
        h.outputs(0, step: 3); h.outputs(1, step: 3)
        #expect(!h.sent(to: 2, incarnation: 1).contains { if case .evaluate = $0 { true } else { false } }, "not scored on old weights")
        #expect(h.core.membership == [.present, .present, .joining])
        h.evaluation(0, epoch: 0, correct: 4); h.evaluation(1, epoch: 0, correct: 4)
        #expect(h.preparedSteps.last == 4 && h.core.membership[2] == .present, "it takes part from the next step")
        h.prepared(Message.Step(epoch: 1, step: 0, globalStep: 4))
        #expect(h.sent(to: 2, incarnation: 1).contains { if case .step(let s, _) = $0 { s.globalStep == 4 } else { false } })
    }

    @Test func anEpochEndWithOnlyPeersBehindEndsUnscoredInsteadOfWaiting() throws {
        var h = CoordinatorHarness(try protocolConfiguration(peers: 2))
        h.admit([0, 1])
        for g in 0..<3 { h.runStep(g, [0, 1]) }
        h.prepared(Message.Step(epoch: 0, step: 3, globalStep: 3))
        h.outputs(0, step: 3)
        // Peer 0 leaves after delivering, peer 1 without; both come back from older checkpoints.
        h.handle(.received(.shutdown(.init(.failed("killed"))), from: CoordinatorHarness.connection(0), user: nil))
        h.handle(.received(.shutdown(.init(.failed("killed"))), from: CoordinatorHarness.connection(1), user: nil))
        #expect(h.core.presentRanks.isEmpty)
        h.hello(0, incarnation: 1, resumeStep: 2, after: 5)
        #expect(h.logged("epoch 1 ends unscored") && h.savedStates.last?.evaluatedEpochs == 1)
        #expect(h.preparedSteps.last == 4 && h.core.presentRanks == [0], "it trains on from the next step")
        for _ in 0..<20 { h.tick(after: 30) }
        #expect(h.outcome == nil || { if case .failed(.nobodyPresent) = h.outcome! { false } else { true } }())
    }

    @Test func theRunEndsWithASummaryAndEveryPeerToldItFinished() throws {
        var h = CoordinatorHarness(try protocolConfiguration(peers: 2), teacherTop1: 0.75)
        h.admit([0, 1])
        for epoch in 0..<2 {
            for g in (epoch * 4)..<(epoch * 4 + 4) { h.runStep(g, [0, 1]) }
            h.evaluation(0, epoch: epoch, correct: 3)
            h.evaluation(1, epoch: epoch, correct: 1)
        }
        guard case .finished(let summary)? = h.outcome else { Issue.record("not finished: \(String(describing: h.outcome))"); return }
        #expect(summary.steps == 8 && summary.peers.map(\.test_top1) == [0.75, 0.25] && summary.teacher_top1 == 0.75 && summary.transport == "zmq")
        for r in 0..<2 {
            guard case .shutdown(let s)? = h.sent(to: r).last else { Issue.record("no shutdown to \(r)"); continue }
            #expect(s.cause == .finished)
        }
        guard case .publish(.end(let end))? = h.actions.dropLast().last else { Issue.record("the stream does not end"); return }
        #expect(end.ok)
        #expect(h.core.isDone)
        #expect(h.handle(.timer(.check), after: 1).isEmpty, "nothing after the end")
    }

    // MARK: Stop

    @Test func aSignalTellsEveryPeerTheRunFailed() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        h.admit([0, 1, 2])
        h.handle(.stop(.signal(15)))
        guard case .failed(.stopped(15))? = h.outcome else { Issue.record("\(String(describing: h.outcome))"); return }
        for r in 0..<3 {
            guard case .shutdown(let s)? = h.sent(to: r).last else { Issue.record("no shutdown to \(r)"); continue }
            #expect(s.reason == "coordinator: stopped by signal 15")
        }
    }

    @Test func aStopMidStepCheckpointsEveryMemberAtTheNextStep() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let admitted = h.admit([0, 1, 2])
        let step = try #require(admitted)
        h.prepared(step)
        h.outputs(0, step: 0)
        h.handle(.stop(.checkpointAndStop(signal: 2)))
        #expect(h.outcome == nil, "the step in flight completes")
        h.outputs(1, step: 0); h.outputs(2, step: 0)
        guard case .stopped(let at, let signal)? = h.outcome else { Issue.record("\(String(describing: h.outcome))"); return }
        #expect(at == 1 && signal == 2 && h.savedStates.last?.globalStep == 1)
        for r in 0..<3 {
            let tail = h.sent(to: r).suffix(2)
            guard case .checkpoint(let c)? = tail.first, case .shutdown? = tail.last else { Issue.record("peer \(r): \(tail)"); continue }
            #expect(c.globalStep == 1)
        }
        #expect(h.preparedSteps == [0])
    }

    // MARK: Resume

    @Test func aResumedCoordinatorContinuesAtTheStepEveryPeerHasReached() throws {
        let configuration = try protocolConfiguration()
        var older = CoordinatorState(); older.globalStep = 2; older.settings = configuration.canonicalSettings
        var newer = CoordinatorState(); newer.globalStep = 4; newer.evaluatedEpochs = 1; newer.settings = configuration.canonicalSettings
        var h = CoordinatorHarness(configuration, savedStates: [older, newer])
        let step = h.admit([0, 1, 2], resumeSteps: [0: 6, 1: 2, 2: 4])
        #expect(step?.globalStep == 2, "peer 1 has reached step 2 only: everyone goes back there")
        #expect(h.actions.contains { if case .truncateHistory(2) = $0 { true } else { false } })
        #expect(h.logged("going back to the step every peer has a checkpoint of") && h.core.state.evaluatedEpochs == 0)
    }

    @Test func aResumedCoordinatorGoesOnWithoutPeersThatDoNotReturn() throws {
        let configuration = try protocolConfiguration()
        var saved = CoordinatorState(); saved.globalStep = 3; saved.settings = configuration.canonicalSettings
        var h = CoordinatorHarness(configuration, savedStates: [saved])
        h.handle(.start)
        h.hello(0, resumeStep: 3); h.hello(1, resumeStep: 3)
        #expect(h.preparedSteps.isEmpty)
        h.tick(after: 301)
        #expect(h.logged("going on without absent peers") && h.preparedSteps == [3] && h.core.presentRanks == [0, 1])
    }

    @Test func aResumeWithOtherSettingsIsRefusedBeforeAnythingIsWritten() throws {
        var saved = CoordinatorState(); saved.globalStep = 3; saved.settings = try protocolConfiguration().canonicalSettings
        var h = CoordinatorHarness(try protocolConfiguration("optimizer: {lr: 0.5}"), savedStates: [saved])
        h.handle(.start)
        guard case .failed(.resume(.settingsChanged(let changes)))? = h.outcome else { Issue.record("\(String(describing: h.outcome))"); return }
        #expect(changes == ["optimizer.lr: 0.1 -> 0.5"])
        #expect(!h.actions.contains { if case .truncateHistory = $0 { true } else if case .saveState = $0 { true } else { false } })
    }

    @Test func aFreshCoordinatorBesidePeersContinuesWhereThePeersAre() throws {
        var h = CoordinatorHarness(try protocolConfiguration())
        let step = h.admit([0, 1, 2], resumeSteps: [0: 3, 1: 3, 2: 3])
        #expect(step?.globalStep == 3 && h.logged("continuing at step 3"))
    }

    @Test func anEpochEndThePreviousCoordinatorMissedIsScoredFirst() throws {
        let configuration = try protocolConfiguration()
        var saved = CoordinatorState(); saved.globalStep = 4; saved.evaluatedEpochs = 0; saved.settings = configuration.canonicalSettings
        var h = CoordinatorHarness(configuration, savedStates: [saved])
        h.admit([0, 1, 2], resumeSteps: [0: 4, 1: 4, 2: 4])
        #expect(h.preparedSteps.isEmpty)
        guard case .evaluate(let e)? = h.sent(to: 0).last else { Issue.record("no evaluate"); return }
        #expect(e.epoch == 0 && e.globalStep == 4)
        for r in 0..<3 { h.evaluation(r, epoch: 0, correct: 2) }
        #expect(h.preparedSteps == [4])
    }
}
