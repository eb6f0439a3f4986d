import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Shows training progress: one live, rewritten line on a terminal; plain log lines (about every ten
/// seconds and at each epoch's end) when standard error is a file or a pipe.
public final class ProgressReporter {
    private let interactive: Bool
    private var lastPlainLine = Date.distantPast
    private let plainInterval: TimeInterval
    private var lineIsOpen = false

    public init(interactive: Bool? = nil, plainInterval: TimeInterval = 10) {
        self.interactive = interactive ?? (isatty(STDERR_FILENO) == 1)
        self.plainInterval = plainInterval
    }

    /// Reports a training step.
    public func step(epoch: Int, epochs: Int, step: Int, steps: Int, loss: Double, accuracy: Double,
                     imagesPerSecond: Double, eta: TimeInterval) {
        let text = String(format: "epoch %d/%d  step %d/%d  loss %.4f  acc %.2f%%  %.0f img/s  ETA %@",
                          epoch + 1, epochs, step + 1, steps, loss, accuracy * 100, imagesPerSecond, Self.duration(eta))
        if interactive {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + text).utf8))
            lineIsOpen = true
        } else if Date().timeIntervalSince(lastPlainLine) >= plainInterval || step + 1 == steps {
            log(text)
            lastPlainLine = Date()
        }
    }

    /// Shows `text` as the live line (terminal) or logs it now and then (`final`: always).
    public func line(_ text: String, final: Bool = false) {
        if interactive {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + text).utf8))
            lineIsOpen = true
        } else if Date().timeIntervalSince(lastPlainLine) >= plainInterval || final {
            log(text)
            lastPlainLine = Date()
        }
    }

    /// Prints a line of its own (ending the live line first).
    public func log(_ message: String) {
        if lineIsOpen { FileHandle.standardError.write(Data("\n".utf8)); lineIsOpen = false }
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }

    public static func duration(_ seconds: TimeInterval) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%dh%02dm", s / 3600, s % 3600 / 60) : String(format: "%dm%02ds", s / 60, s % 60)
    }
}
