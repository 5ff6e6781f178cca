/*
 * A plain NVML client for the tests of the simulated libnvidia-ml.so.1: it loads the
 * library with dlopen, looks every function up with dlsym as go-nvml does, and runs the
 * commands given on its command line in order, printing one line per command.
 *
 *   nvml_client LIBRARY COMMAND [ARGS]... [COMMAND [ARGS]...]...
 *
 *   init                       nvmlInit_v2
 *   shutdown                   nvmlShutdown
 *   mode GPU 0|1               nvmlDeviceSetMigMode         -> "mode RET ACTIVATION"
 *   create-gi GPU PROFILE_ID START SIZE
 *                              ...CreateGpuInstanceWithPlacement -> "gi RET GI_ID START SIZE"
 *   create-ci GPU GI_ID CI_PROFILE_ID
 *                              ...CreateComputeInstance     -> "ci RET CI_ID START SIZE"
 *   destroy-ci GPU GI_ID CI_ID / destroy-gi GPU GI_ID       -> "destroy RET"
 *   read                       the geometry of every GPU as one JSON line
 *   churn GPU PROFILE_ID START SIZE CI_PROFILE_ID N
 *                              N cycles of GI, CI, destroy CI, destroy GI -> "churn OK N"
 *   churn-until GPU PROFILE_ID START SIZE CI_PROFILE_ID FILE
 *                              the same cycles until FILE exists -> "churn OK CYCLES"
 *   handle GPU                 print the device handle     -> "handle 0x..."
 *   use-handle HEX             nvmlDeviceGetName on that handle -> "use-handle RET"
 *   bad GPU                    bad input, as "bad CHECK RET [DETAIL]" lines
 *   preinit                    calls before nvmlInit       -> "preinit RET RET"
 *   absent NAME                dlsym of NAME               -> "absent NAME yes|no"
 *   threads N CALLS            N threads, each CALLS reads of every GPU -> "threads OK N*CALLS"
 *   profile-v3 GPU INDEX GI_ID CI_INDEX
 *                              GI profile INDEX and the CI profile CI_INDEX of GI GI_ID
 *                              through the v2 and the v3 structs -> "profile vN RET ..." lines
 *
 * Any unexpected NVML answer in read/churn prints "FAIL ..." and exits 1.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvml_abi.h"

static void *lib;
#define FN(name) static __typeof__(&name) p_##name;
#define FN_ALL(X) \
    X(nvmlInit_v2) X(nvmlShutdown) X(nvmlDeviceGetCount_v2) X(nvmlDeviceGetHandleByIndex_v2) \
    X(nvmlDeviceGetUUID) X(nvmlDeviceGetName) X(nvmlDeviceGetPciInfo_v3) X(nvmlDeviceGetMigMode) \
    X(nvmlDeviceSetMigMode) X(nvmlDeviceGetGpuInstanceProfileInfoV) \
    X(nvmlDeviceGetGpuInstancePossiblePlacements_v2) X(nvmlDeviceCreateGpuInstanceWithPlacement) \
    X(nvmlDeviceGetGpuInstances) X(nvmlDeviceGetGpuInstanceById) X(nvmlGpuInstanceGetInfo) \
    X(nvmlGpuInstanceDestroy) X(nvmlGpuInstanceCreateComputeInstance) \
    X(nvmlGpuInstanceGetComputeInstanceProfileInfoV) X(nvmlGpuInstanceGetComputeInstances) \
    X(nvmlGpuInstanceGetComputeInstanceById) X(nvmlComputeInstanceGetInfo_v2) \
    X(nvmlComputeInstanceDestroy) X(nvmlDeviceGetMaxMigDeviceCount) \
    X(nvmlDeviceGetMigDeviceHandleByIndex) X(nvmlDeviceGetGpuInstanceId) \
    X(nvmlDeviceGetComputeInstanceId) X(nvmlDeviceGetComputeRunningProcesses_v3) \
    X(nvmlErrorString)
FN_ALL(FN)

#define CALL(name) (p_##name)
#define MUST(expr)                                                               \
    do {                                                                         \
        nvmlReturn_t r_ = (expr);                                                \
        if (r_ != NVML_SUCCESS) {                                                \
            printf("FAIL %s:%d %s -> %d\n", __FILE__, __LINE__, #expr, r_);      \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static void load(const char *path)
{
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("FAIL dlopen %s\n", dlerror());
        exit(1);
    }
#define RESOLVE(name)                                         \
    *(void **)&p_##name = dlsym(lib, #name);                  \
    if (!p_##name) {                                          \
        printf("FAIL dlsym %s\n", #name);                     \
        exit(1);                                              \
    }
    FN_ALL(RESOLVE)
}

static nvmlDevice_t gpu(unsigned int index)
{
    nvmlDevice_t dev = NULL;
    MUST(CALL(nvmlDeviceGetHandleByIndex_v2)(index, &dev));
    return dev;
}

static nvmlGpuInstance_t gi_by_id(unsigned int index, unsigned int id)
{
    nvmlGpuInstance_t gi = NULL;
    MUST(CALL(nvmlDeviceGetGpuInstanceById)(gpu(index), id, &gi));
    return gi;
}

/* Every GPU instance of a GPU: over the GI profiles (by index, until INVALID_ARGUMENT). */
static unsigned int all_gis(nvmlDevice_t dev, nvmlGpuInstance_t *out, unsigned int room)
{
    unsigned int total = 0;
    for (unsigned int index = 0;; index++) {
        nvmlGpuInstanceProfileInfo_v2_t info = {.version = nvmlGpuInstanceProfileInfo_v2};
        nvmlReturn_t r = CALL(nvmlDeviceGetGpuInstanceProfileInfoV)(dev, index, &info);
        if (r == NVML_ERROR_INVALID_ARGUMENT)
            break;
        if (r == NVML_ERROR_NOT_SUPPORTED)
            continue;
        MUST(r);
        unsigned int count = 0;
        MUST(CALL(nvmlDeviceGetGpuInstances)(dev, info.id, NULL, &count));
        if (count == 0)
            continue;
        if (total + count > room) {
            printf("FAIL more GIs than %u\n", room);
            exit(1);
        }
        MUST(CALL(nvmlDeviceGetGpuInstances)(dev, info.id, out + total, &count));
        total += count;
    }
    return total;
}

static void read_all(void)
{
    unsigned int n = 0;
    MUST(CALL(nvmlDeviceGetCount_v2)(&n));
    printf("{\"gpus\": [");
    for (unsigned int g = 0; g < n; g++) {
        nvmlDevice_t dev = gpu(g);
        char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE], name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
        nvmlPciInfo_t pci;
        unsigned int cur = 0, pend = 0;
        MUST(CALL(nvmlDeviceGetUUID)(dev, uuid, sizeof uuid));
        MUST(CALL(nvmlDeviceGetName)(dev, name, sizeof name));
        MUST(CALL(nvmlDeviceGetPciInfo_v3)(dev, &pci));
        MUST(CALL(nvmlDeviceGetMigMode)(dev, &cur, &pend));
        printf("%s{\"index\": %u, \"uuid\": \"%s\", \"name\": \"%s\", \"pci_bus_id\": \"%s\", "
               "\"mig\": {\"current\": %s, \"pending\": %s}, \"instances\": [",
               g ? ", " : "", g, uuid, name, pci.busId, cur ? "true" : "false",
               pend ? "true" : "false");
        nvmlGpuInstance_t gis[64];
        unsigned int count = cur ? all_gis(dev, gis, 64) : 0;
        for (unsigned int i = 0; i < count; i++) {
            nvmlGpuInstanceInfo_t info;
            MUST(CALL(nvmlGpuInstanceGetInfo)(gis[i], &info));
            if (info.device != dev) {
                printf("FAIL GI info device %p is not %p\n", (void *)info.device, (void *)dev);
                exit(1);
            }
            printf("%s{\"gi_id\": %u, \"profile_id\": %u, \"placement\": [%u, %u], \"compute\": [",
                   i ? ", " : "", info.id, info.profileId, info.placement.start,
                   info.placement.size);
            int first = 1;
            for (unsigned int cp = 0; cp < 8; cp++) {
                nvmlComputeInstanceProfileInfo_v2_t cinfo = {.version = nvmlComputeInstanceProfileInfo_v2};
                nvmlReturn_t r = CALL(nvmlGpuInstanceGetComputeInstanceProfileInfoV)(
                    gis[i], cp, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &cinfo);
                if (r == NVML_ERROR_NOT_SUPPORTED)
                    continue;
                MUST(r);
                nvmlComputeInstance_t cis[16];
                unsigned int ccount = 16;
                MUST(CALL(nvmlGpuInstanceGetComputeInstances)(gis[i], cinfo.id, cis, &ccount));
                for (unsigned int c = 0; c < ccount; c++) {
                    nvmlComputeInstanceInfo_t ci;
                    MUST(CALL(nvmlComputeInstanceGetInfo_v2)(cis[c], &ci));
                    if (ci.gpuInstance != gis[i] || ci.device != dev) {
                        printf("FAIL CI info parents\n");
                        exit(1);
                    }
                    /* the MIG device of this CI, for its UUID */
                    char mig_uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE] = "";
                    unsigned int max = 0;
                    MUST(CALL(nvmlDeviceGetMaxMigDeviceCount)(dev, &max));
                    for (unsigned int m = 0; m < max; m++) {
                        nvmlDevice_t mig;
                        unsigned int gi_id, ci_id;
                        if (CALL(nvmlDeviceGetMigDeviceHandleByIndex)(dev, m, &mig) != NVML_SUCCESS)
                            continue;
                        MUST(CALL(nvmlDeviceGetGpuInstanceId)(mig, &gi_id));
                        MUST(CALL(nvmlDeviceGetComputeInstanceId)(mig, &ci_id));
                        if (gi_id == info.id && ci_id == ci.id)
                            MUST(CALL(nvmlDeviceGetUUID)(mig, mig_uuid, sizeof mig_uuid));
                    }
                    printf("%s{\"ci_id\": %u, \"profile_id\": %u, \"placement\": [%u, %u], "
                           "\"uuid\": \"%s\"}",
                           first ? "" : ", ", ci.id, ci.profileId, ci.placement.start,
                           ci.placement.size, mig_uuid);
                    first = 0;
                }
            }
            printf("]}");
        }
        printf("]}");
    }
    printf("]}\n");
}

static nvmlReturn_t create_gi(unsigned int g, unsigned int profile, unsigned int start,
                              unsigned int size, nvmlGpuInstance_t *gi)
{
    nvmlGpuInstancePlacement_t placement = {.start = start, .size = size};
    return CALL(nvmlDeviceCreateGpuInstanceWithPlacement)(gpu(g), profile, &placement, gi);
}

static unsigned int thread_calls;

static void *reader(void *arg)
{
    (void)arg;
    unsigned int n = 0;
    MUST(CALL(nvmlDeviceGetCount_v2)(&n));
    for (unsigned int k = 0; k < thread_calls; k++) {
        for (unsigned int g = 0; g < n; g++) {
            unsigned int cur, pend;
            char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
            nvmlDevice_t dev = gpu(g);
            MUST(CALL(nvmlDeviceGetMigMode)(dev, &cur, &pend));
            MUST(CALL(nvmlDeviceGetName)(dev, name, sizeof name));
        }
    }
    return NULL;
}

static void bad(unsigned int g)
{
    nvmlDevice_t dev = gpu(g);
    char buf[128];
    unsigned int count, cur, pend;
    nvmlReturn_t r;

    printf("bad null-count %d\n", CALL(nvmlDeviceGetCount_v2)(NULL));
    printf("bad null-handle-out %d\n", CALL(nvmlDeviceGetHandleByIndex_v2)(0, NULL));
    printf("bad null-mode %d\n", CALL(nvmlDeviceGetMigMode)(dev, NULL, &pend));
    printf("bad null-name %d\n", CALL(nvmlDeviceGetName)(dev, NULL, 96));
    printf("bad null-device %d\n", CALL(nvmlDeviceGetMigMode)(NULL, &cur, &pend));
    printf("bad null-placement %d\n",
           CALL(nvmlDeviceCreateGpuInstanceWithPlacement)(dev, 19, NULL, (nvmlGpuInstance_t *)buf));
    printf("bad null-count-list %d\n", CALL(nvmlDeviceGetGpuInstances)(dev, 19, NULL, NULL));
    printf("bad short-name %d\n", CALL(nvmlDeviceGetName)(dev, buf, 4));
    printf("bad index-past-end %d\n", CALL(nvmlDeviceGetHandleByIndex_v2)(1000, (nvmlDevice_t *)buf));
    /* undersized arrays: INSUFFICIENT_SIZE with the count needed */
    nvmlGpuInstancePlacement_t placements[2];
    count = 2;
    r = CALL(nvmlDeviceGetGpuInstancePossiblePlacements_v2)(dev, 19, placements, &count);
    printf("bad short-placements %d %u\n", r, count);
    nvmlGpuInstance_t one[1];
    count = 1;
    r = CALL(nvmlDeviceGetGpuInstances)(dev, 19, one, &count);
    printf("bad short-gi-list %d %u\n", r, count);
    count = 0;
    r = CALL(nvmlDeviceGetComputeRunningProcesses_v3)(dev, &count, NULL);
    printf("bad processes-null %d %u\n", r, count);
    /* versioned struct with a wrong version */
    nvmlGpuInstanceProfileInfo_v2_t info = {.version = 1};
    printf("bad wrong-version %d\n", CALL(nvmlDeviceGetGpuInstanceProfileInfoV)(dev, 0, &info));
    /* handles that are not this process's: garbage, a stack address, a GI as a device */
    printf("bad garbage-handle %d\n",
           CALL(nvmlDeviceGetName)((nvmlDevice_t)(uintptr_t)0xdeadbeef0, buf, sizeof buf));
    printf("bad stack-handle %d\n", CALL(nvmlDeviceGetName)((nvmlDevice_t)(void *)buf, buf, sizeof buf));
    nvmlGpuInstance_t gi = NULL;
    count = 8;
    nvmlGpuInstance_t list[8];
    MUST(CALL(nvmlDeviceGetGpuInstances)(dev, 19, list, &count));
    if (count > 0) {
        gi = list[0];
        printf("bad gi-as-device %d\n", CALL(nvmlDeviceGetName)((nvmlDevice_t)gi, buf, sizeof buf));
        printf("bad device-as-gi %d\n", CALL(nvmlGpuInstanceDestroy)((nvmlGpuInstance_t)dev));
    }
    printf("bad error-string %s\n", CALL(nvmlErrorString)(NVML_ERROR_INSUFFICIENT_SIZE));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: nvml_client LIBRARY COMMAND [ARGS]...\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    load(argv[1]);
    for (int i = 2; i < argc;) {
        const char *cmd = argv[i++];
#define ARG() ((unsigned int)strtoul(argv[i++], NULL, 0))
        if (!strcmp(cmd, "init")) {
            printf("init %d\n", CALL(nvmlInit_v2)());
        } else if (!strcmp(cmd, "shutdown")) {
            printf("shutdown %d\n", CALL(nvmlShutdown)());
        } else if (!strcmp(cmd, "preinit")) {
            unsigned int n;
            nvmlDevice_t dev;
            printf("preinit %d %d\n", CALL(nvmlDeviceGetCount_v2)(&n),
                   CALL(nvmlDeviceGetHandleByIndex_v2)(0, &dev));
        } else if (!strcmp(cmd, "mode")) {
            unsigned int g = ARG(), mode = ARG();
            nvmlReturn_t activation = NVML_ERROR_UNKNOWN;
            nvmlReturn_t r = CALL(nvmlDeviceSetMigMode)(gpu(g), mode, &activation);
            printf("mode %d %d\n", r, activation);
        } else if (!strcmp(cmd, "create-gi")) {
            unsigned int g = ARG(), profile = ARG(), start = ARG(), size = ARG();
            nvmlGpuInstance_t gi = NULL;
            nvmlReturn_t r = create_gi(g, profile, start, size, &gi);
            nvmlGpuInstanceInfo_t info = {0};
            if (r == NVML_SUCCESS)
                MUST(CALL(nvmlGpuInstanceGetInfo)(gi, &info));
            printf("gi %d %u %u %u\n", r, info.id, info.placement.start, info.placement.size);
        } else if (!strcmp(cmd, "create-ci")) {
            unsigned int g = ARG(), gi_id = ARG(), profile = ARG();
            nvmlComputeInstance_t ci = NULL;
            nvmlReturn_t r = CALL(nvmlGpuInstanceCreateComputeInstance)(gi_by_id(g, gi_id), profile, &ci);
            nvmlComputeInstanceInfo_t info = {0};
            if (r == NVML_SUCCESS)
                MUST(CALL(nvmlComputeInstanceGetInfo_v2)(ci, &info));
            printf("ci %d %u %u %u\n", r, info.id, info.placement.start, info.placement.size);
        } else if (!strcmp(cmd, "destroy-ci")) {
            unsigned int g = ARG(), gi_id = ARG(), ci_id = ARG();
            nvmlComputeInstance_t ci = NULL;
            MUST(CALL(nvmlGpuInstanceGetComputeInstanceById)(gi_by_id(g, gi_id), ci_id, &ci));
            printf("destroy %d\n", CALL(nvmlComputeInstanceDestroy)(ci));
        } else if (!strcmp(cmd, "destroy-gi")) {
            unsigned int g = ARG(), gi_id = ARG();
            nvmlGpuInstance_t gi = gi_by_id(g, gi_id);
            nvmlReturn_t r = CALL(nvmlGpuInstanceDestroy)(gi);
            nvmlGpuInstanceInfo_t info;
            /* the handle of a destroyed instance is refused */
            printf("destroy %d %d\n", r, CALL(nvmlGpuInstanceGetInfo)(gi, &info));
        } else if (!strcmp(cmd, "read")) {
            read_all();
        } else if (!strcmp(cmd, "churn") || !strcmp(cmd, "churn-until")) {
            unsigned int g = ARG(), profile = ARG(), start = ARG(), size = ARG();
            unsigned int ci_profile = ARG(), n = 0, k;
            const char *stop = NULL;
            if (!strcmp(cmd, "churn"))
                n = ARG();
            else
                stop = argv[i++];
            for (k = 0; stop ? access(stop, F_OK) != 0 : k < n; k++) {
                nvmlGpuInstance_t gi;
                nvmlComputeInstance_t ci;
                MUST(create_gi(g, profile, start, size, &gi));
                MUST(CALL(nvmlGpuInstanceCreateComputeInstance)(gi, ci_profile, &ci));
                MUST(CALL(nvmlComputeInstanceDestroy)(ci));
                MUST(CALL(nvmlGpuInstanceDestroy)(gi));
            }
            printf("churn OK %u\n", k);
        } else if (!strcmp(cmd, "handle")) {
            printf("handle %p\n", (void *)gpu(ARG()));
        } else if (!strcmp(cmd, "use-handle")) {
            nvmlDevice_t dev = (nvmlDevice_t)(uintptr_t)strtoull(argv[i++], NULL, 16);
            char name[96];
            printf("use-handle %d\n", CALL(nvmlDeviceGetName)(dev, name, sizeof name));
        } else if (!strcmp(cmd, "bad")) {
            bad(ARG());
        } else if (!strcmp(cmd, "threads")) {
            unsigned int n = ARG();
            thread_calls = ARG();
            pthread_t threads[64];
            for (unsigned int t = 0; t < n && t < 64; t++)
                if (pthread_create(&threads[t], NULL, reader, NULL) != 0) {
                    printf("FAIL pthread_create\n");
                    return 1;
                }
            for (unsigned int t = 0; t < n && t < 64; t++)
                pthread_join(threads[t], NULL);
            printf("threads OK %u\n", n * thread_calls);
        } else if (!strcmp(cmd, "profile-v3")) {
            unsigned int g = ARG(), index = ARG(), gi_id = ARG(), ci_index = ARG();
            nvmlGpuInstanceProfileInfo_v2_t v2 = {.version = nvmlGpuInstanceProfileInfo_v2};
            nvmlGpuInstanceProfileInfo_v3_t v3 = {.version = nvmlGpuInstanceProfileInfo_v3,
                                                  .capabilities = 0xffffffff};
            nvmlReturn_t r2 = CALL(nvmlDeviceGetGpuInstanceProfileInfoV)(gpu(g), index, &v2);
            nvmlReturn_t r3 = CALL(nvmlDeviceGetGpuInstanceProfileInfoV)(
                gpu(g), index, (nvmlGpuInstanceProfileInfo_v2_t *)&v3);
            printf("profile v2 %d %u %u %u %u %llu %s\n", r2, v2.id, v2.sliceCount,
                   v2.instanceCount, v2.multiprocessorCount, v2.memorySizeMB, v2.name);
            printf("profile v3 %d %u %u %u %u %llu %s caps=%u\n", r3, v3.id, v3.sliceCount,
                   v3.instanceCount, v3.multiprocessorCount, v3.memorySizeMB, v3.name,
                   v3.capabilities);
            nvmlComputeInstanceProfileInfo_v2_t c2 = {.version = nvmlComputeInstanceProfileInfo_v2};
            nvmlComputeInstanceProfileInfo_v3_t c3 = {.version = nvmlComputeInstanceProfileInfo_v3,
                                                      .capabilities = 0xffffffff};
            nvmlGpuInstance_t gi = gi_by_id(g, gi_id);
            r2 = CALL(nvmlGpuInstanceGetComputeInstanceProfileInfoV)(gi, ci_index, 0, &c2);
            r3 = CALL(nvmlGpuInstanceGetComputeInstanceProfileInfoV)(
                gi, ci_index, 0, (nvmlComputeInstanceProfileInfo_v2_t *)&c3);
            printf("profile ci-v2 %d %u %u %u %u %s\n", r2, c2.id, c2.sliceCount, c2.instanceCount,
                   c2.multiprocessorCount, c2.name);
            printf("profile ci-v3 %d %u %u %u %u %s caps=%u\n", r3, c3.id, c3.sliceCount,
                   c3.instanceCount, c3.multiprocessorCount, c3.name, c3.capabilities);
        } else if (!strcmp(cmd, "absent")) {
            const char *name = argv[i++];
            printf("absent %s %s\n", name, dlsym(lib, name) ? "no" : "yes");
        } else {
            fprintf(stderr, "unknown command %s\n", cmd);
            return 2;
        }
    }
    return 0;
}
