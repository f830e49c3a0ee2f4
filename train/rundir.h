/* rundir.h — what `train` guards in its run directory before it writes there: the inputs it
 * must not write over, and one job at a time.
 *
 * The lock is a POSIX record lock (fcntl F_SETLK, exclusive, whole file) on run.dir/ctrain.lock,
 * taken by rank 0 and held until the process ends. The kernel drops it when the holder exits,
 * however it ends (kill -9 included), so a dead job leaves no stale lock: the file stays, the lock
 * does not. POSIX locks rather than flock(2) because they are the kind network filesystems make
 * coherent across nodes: NFS v3 (through lockd/NLM) and v4 (in the protocol, with leases that a
 * crashed client's locks expire with), Lustre mounted with -o flock, GPFS, BeeGFS; flock(2) is
 * node-local on some of them (Lustre's localflock, older NFS clients). A filesystem that keeps no
 * locks at all (Lustre without -o flock) gets a warning, and the run goes on unguarded. */
#ifndef CT_TRAIN_RUNDIR_H
#define CT_TRAIN_RUNDIR_H

#include <stddef.h>

#include "config.h"

/* Refuses a run.dir that is, or is inside, model.init_from or lora.init_from (a folder, or the
 * folder of a checkpoint file), compared as real paths (symbolic links, "..", a run.dir not made
 * yet). -1 with err naming run.dir and the key. */
int ct_rundir_check_inputs(const ct_config *cfg, char *err, size_t errlen);

/* Creates dir (as mkdir -p) and locks dir/ctrain.lock for this process's lifetime. *fd receives
 * the lock file's descriptor, or -1 where the filesystem keeps no locks (a warning on stderr).
 * -1 with err naming the directory when another process holds the lock, or on an I/O error. */
int ct_rundir_lock(const char *dir, int *fd, char *err, size_t errlen);

/* Releases the lock (closes fd); -1 is ignored. */
void ct_rundir_unlock(int fd);

#endif
