/*
 * Per-call cost of the simulated libnvidia-ml.so.1 (bench/cabi.py runs it): loads the
 * library with dlopen, then times with CLOCK_MONOTONIC each of
 *   READS  calls of nvmlDeviceGetMigMode          ("read" lines)
 *   CHANGES cycles of nvmlDeviceCreateGpuInstanceWithPlacement ("create" lines) and
 *           nvmlGpuInstanceDestroy                ("destroy" lines)
 * on GPU 0, printing one "KIND NANOSECONDS" line per call. Before timing it turns MIG
 * mode on and makes one untimed read and cycle (the simulator loads its tables lazily).
 *
 *   cabi_calls LIBRARY READS CHANGES PROFILE_ID START SIZE
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "nvml_abi.h"

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

#define LOOKUP(var, name)                                   \
    __typeof__(&name) var = (__typeof__(&name))dlsym(lib, #name); \
    if (!var) { fprintf(stderr, "no %s\n", #name); return 1; }

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: cabi_calls LIBRARY READS CHANGES PROFILE_ID START SIZE\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    int reads = atoi(argv[2]), changes = atoi(argv[3]);
    unsigned int profile = (unsigned int)atoi(argv[4]);
    nvmlGpuInstancePlacement_t at = {(unsigned int)atoi(argv[5]), (unsigned int)atoi(argv[6])};
    LOOKUP(init, nvmlInit_v2)
    LOOKUP(by_index, nvmlDeviceGetHandleByIndex_v2)
    LOOKUP(get_mode, nvmlDeviceGetMigMode)
    LOOKUP(create, nvmlDeviceCreateGpuInstanceWithPlacement)
    LOOKUP(destroy, nvmlGpuInstanceDestroy)
    LOOKUP(set_mode, nvmlDeviceSetMigMode)
    nvmlDevice_t dev;
    nvmlReturn_t activation;
    nvmlGpuInstance_t warm;
    unsigned int cur, pend;
    if (init() != NVML_SUCCESS || by_index(0, &dev) != NVML_SUCCESS ||
        set_mode(dev, NVML_DEVICE_MIG_ENABLE, &activation) != NVML_SUCCESS ||
        get_mode(dev, &cur, &pend) != NVML_SUCCESS || create(dev, profile, &at, &warm) != NVML_SUCCESS ||
        destroy(warm) != NVML_SUCCESS) {
        fprintf(stderr, "nvmlInit, MIG mode or the warm-up cycle failed\n");
        return 1;
    }
    for (int i = 0; i < reads; i++) {
        long long t0 = now_ns();
        nvmlReturn_t r = get_mode(dev, &cur, &pend);
        long long t1 = now_ns();
        if (r != NVML_SUCCESS) { fprintf(stderr, "GetMigMode %d\n", r); return 1; }
        printf("read %lld\n", t1 - t0);
    }
    for (int i = 0; i < changes; i++) {
        nvmlGpuInstance_t gi;
        long long t0 = now_ns();
        nvmlReturn_t r = create(dev, profile, &at, &gi);
        long long t1 = now_ns();
        if (r != NVML_SUCCESS) { fprintf(stderr, "create %d\n", r); return 1; }
        r = destroy(gi);
        long long t2 = now_ns();
        if (r != NVML_SUCCESS) { fprintf(stderr, "destroy %d\n", r); return 1; }
        printf("create %lld\ndestroy %lld\n", t1 - t0, t2 - t1);
    }
    return 0;
}
