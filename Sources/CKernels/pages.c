// Whole pages for the tensor storage pool: map, unmap, and move them between addresses without copying.
#define _GNU_SOURCE
#include "CKernels.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

void *cohort_pages_map(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int cohort_pages_unmap(void *address, size_t bytes) {
    return munmap(address, bytes) == 0 ? 0 : errno;
}

int cohort_pages_move(void *from, size_t bytes, void *to) {
#if defined(__linux__) && defined(MREMAP_FIXED)
    void *p = mremap(from, bytes, bytes, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    if (p == MAP_FAILED) return errno;
    return p == to ? 0 : EINVAL;
#else
    (void)from; (void)bytes; (void)to;
    return ENOSYS;
#endif
}

size_t cohort_page_size(void) {
    long size = sysconf(_SC_PAGESIZE);
    return size > 0 ? (size_t)size : 4096;
}
