// Linux process control that Swift cannot call directly (prctl is variadic).
#include <sys/prctl.h>
#include <signal.h>

/// Asks the kernel to send `signal` to this process when the thread that started it ends (its parent
/// dies, however it dies). Returns 0, or -1 with errno set.
static inline int cohort_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0UL, 0UL, 0UL);
}
