import Foundation
import Synchronization

/// The signal (SIGINT or SIGTERM) that asked this process to stop, 0 while none has. Long loops check
/// it between messages and stop cleanly: the coordinator tells the peers, everyone flushes its logs.
public enum StopSignal {
    private static let received = Atomic<Int32>(0)

    /// Installs the handlers for SIGINT and SIGTERM, and unblocks both: a process inherits its parent's
    /// signal mask, and some parents (test runners, supervisors) start children with them blocked.
    public static func install() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM] {
            signal(s) { number in StopSignal.received.store(number, ordering: .relaxed) }
            sigaddset(&set, s)
        }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// The signal received, if any.
    public static var current: Int32? {
        let s = received.load(ordering: .relaxed)
        return s == 0 ? nil : s
    }

    /// The conventional exit status for a process stopped by `signal` (128 + its number).
    public static func exitStatus(_ signal: Int32) -> Int32 { 128 + signal }
}
