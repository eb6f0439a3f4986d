import Foundation
import CProcess

/// A process `cohort launch` started (a coordinator or a peer) ends with its launcher: it asks the kernel
/// for SIGTERM when the launcher dies — by any signal, SIGKILL and SIGPIPE included — and stops cleanly
/// on it like on Ctrl-C. The launcher passes its PID in the environment.
public enum LauncherChild {
    /// The environment variable that carries the launcher's PID to its children.
    public static let environmentKey = "COHORT_LAUNCHER_PID"

    /// When this process was started by `cohort launch`: arranges SIGTERM on the launcher's death, and
    /// returns false when the launcher is already gone (the caller should not start). Otherwise true.
    public static func bindToLauncher() -> Bool {
        guard let value = ProcessInfo.processInfo.environment[environmentKey], let launcher = pid_t(value) else { return true }
        _ = cohort_set_parent_death_signal(SIGTERM)
        // The launcher may have died before the request took effect: then this process was re-parented.
        return getppid() == launcher
    }
}
