/* tfevents.h — TensorBoard event files, written by hand: TFRecord framing (crc32c), Event
 * protobufs of scalar summaries, and a run directory's files kept free of steps a resume redoes.
 *
 * A file is a sequence of records:
 *   uint64 length (little-endian) | uint32 masked_crc32c(length's 8 bytes) | data[length] |
 *   uint32 masked_crc32c(data)
 * masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8, c = crc32c(x) (Castagnoli).
 * Each record's data is a tensorflow.Event (tensorboard/compat/proto/event.proto):
 *   wall_time (1, double), step (2, int64), file_version (3, string: the first event of a file,
 *   "brain.Event:2"), summary (5, Summary: repeated value (1) of Value {tag (1, string),
 *   simple_value (2, float)}), session_log (7, SessionLog {status (1): START = 1}).
 *
 * The files ctrain writes are named events.out.tfevents.<10-digit seconds>.<host>.<pid>.0.ctrain
 * (TensorBoard reads every file whose name holds "tfevents"), one per start of a run. */
#ifndef CT_TRAIN_TFEVENTS_H
#define CT_TRAIN_TFEVENTS_H

#include <stddef.h>
#include <stdint.h>

/* crc32c (Castagnoli, reflected 0x82F63B78, as iSCSI and TFRecord use it) of data[n]. */
uint32_t ct_crc32c(const void *data, size_t n);
/* TFRecord's masked form of ct_crc32c(data[n]). */
uint32_t ct_crc32c_masked(const void *data, size_t n);

/* One record around data[n] into out, which holds n + 16 bytes; returns n + 16. */
size_t ct_tfrecord_frame(uint8_t *out, const void *data, size_t n);

/* The next record of buf[len] from *pos: 1 with *data, *n and *pos moved past it; 0 at the end
 * of buf; -1 when the record is damaged (a checksum differs) or cut short (len ends inside it). */
int ct_tfrecord_next(const uint8_t *buf, size_t len, size_t *pos, const uint8_t **data, size_t *n);

/* An Event's step (0 when it has none): 0, or -1 when data[n] is not a well-formed protobuf. */
int ct_tfevent_step(const uint8_t *data, size_t n, int64_t *step);

typedef struct {
    const char *tag;
    double value; /* written as a float; a value that is not finite is left out */
} ct_tb_scalar;

/* Encodes an Event of wall_time, step and a Summary of v[nv] (those with a finite value) into
 * out[cap]; returns its length, or 0 when cap is too small. */
size_t ct_tfevent_scalars(uint8_t *out, size_t cap, double wall_time, int64_t step, const ct_tb_scalar *v, int nv);

typedef struct ct_tfevents ct_tfevents;

/* Opens this start's event file in dir (rank 0, once every check of a run's start has passed).
 * First the earlier files ctrain wrote there lose every event of a step after resume_step (0 for a
 * fresh start: all of them), rewritten through "<file>.tmp" and renamed, or removed when nothing
 * but their file_version is left; a damaged or cut record ends what is kept of a file. So all the
 * files of dir hold each (tag, step) once. The new file is named to sort after them and starts with
 * file_version and, after a resume, a SessionLog START at resume_step + 1 (a TensorBoard that has
 * already read the dropped steps purges them on it). Returns 0, or -1 with err naming the file. */
int ct_tfevents_open(ct_tfevents **out, const char *dir, int64_t resume_step, char *err, size_t errlen);

/* Appends one Event of v[nv] at step, stamped with the time now, and flushes it to the kernel.
 * Returns 0, or -1 with errno saying why (the file: ct_tfevents_path). */
int ct_tfevents_write(ct_tfevents *w, int64_t step, const ct_tb_scalar *v, int nv);

/* fsync: the events of the steps a checkpoint holds are on disk before it is. 0, or -1 (errno). */
int ct_tfevents_sync(ct_tfevents *w);

const char *ct_tfevents_path(const ct_tfevents *w);

/* Flushes, syncs and closes; 0, or -1 with err naming the file. Frees w either way (NULL: 0). */
int ct_tfevents_close(ct_tfevents *w, char *err, size_t errlen);

#endif
