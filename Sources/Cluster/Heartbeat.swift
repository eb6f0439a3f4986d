import Foundation
import Synchronization
import Wire
import ZeroMQ

/// A peer's heartbeat: a thread with its own connection to the coordinator that sends `heartbeat` every
/// interval and notes the coordinator's answers, so the coordinator hears from the peer while it
/// computes, and the peer can tell a lost coordinator from a slow one.
final class HeartbeatThread: Sendable {
    private let flags = ThreadFlags()
    /// When the coordinator last answered (milliseconds since 1970).
    private let lastAnswer = Clock()
    /// The session of the peer's current admission.
    private let currentSession = Session()

    /// A session token shared with the beating thread; 0 while there is none.
    final class Session: Sendable {
        private let token = Atomic<Int>(0)
        var value: Int? {
            get { let s = token.load(ordering: .relaxed); return s == 0 ? nil : s }
            set { token.store(newValue ?? 0, ordering: .relaxed) }
        }
    }

    final class Clock: Sendable {
        private let milliseconds = Atomic<Int64>(Int64(Date().timeIntervalSince1970 * 1000))
        func touch() { milliseconds.store(Int64(Date().timeIntervalSince1970 * 1000), ordering: .relaxed) }
        var date: Date { Date(timeIntervalSince1970: Double(milliseconds.load(ordering: .relaxed)) / 1000) }
    }

    /// Starts beating for `rank` to `endpoint` (with CURVE when `keys` are given).
    init(context: ZMQContext, endpoint: String, rank: Int, codec: WireCodec, interval: Double, keys: CohortKeys?) throws {
        let socket = try ZMQSocket(context, type: .dealer)
        try socket.setLinger(milliseconds: 0)
        try socket.setSendTimeout(milliseconds: 0)
        if let keys { try socket.makeCurveClient(serverKey: keys.coordinator, keys: keys.own) }
        try socket.connect(endpoint)
        let box = SocketBox(socket)
        let thread = Thread { [flags, lastAnswer, currentSession] in
            defer { flags.finish() }
            guard let socket = box.take() else { return }
            var sequence = 0
            var next = Date()
            while !flags.stopRequested {
                if Date() >= next {
                    // A full queue (coordinator unreachable) drops the beat: nothing piles up.
                    try? socket.send(codec.encode(.heartbeat(.init(rank: rank, sequence: sequence, session: currentSession.value))),
                                     dontWait: true)
                    sequence += 1
                    next = Date() + interval
                }
                let wait = max(1, min(100, Int(next.timeIntervalSinceNow * 1000)))
                guard (try? socket.waitForMessage(milliseconds: wait)) == true else { continue }
                while let frames = try? socket.receive(dontWait: true) {
                    if case .heartbeat? = try? codec.decode(frames) {
                        lastAnswer.touch()
                    }
                }
            }
        }
        thread.name = "cohort-heartbeat"
        thread.start()
    }

    /// When the coordinator last answered a heartbeat.
    var lastAnswered: Date { lastAnswer.date }

    /// Counts the coordinator as heard from now (after a (re)join).
    func touch() { lastAnswer.touch() }

    /// The admission the beats vouch for (``Message/Welcome/session``); nil while (re)joining, so that a
    /// connection this peer has left stops counting as alive.
    var session: Int? {
        get { currentSession.value }
        set { currentSession.value = newValue }
    }

    func stop() { flags.stopAndWait() }
}
