// Non-variadic wrappers around the libvips calls Millions uses: Swift cannot call C
// variadic functions. Every output image is a new reference the caller must unref.
#ifndef MILLIONS_CVIPS_SHIM_H
#define MILLIONS_CVIPS_SHIM_H
#include <vips/vips.h>
#include <malloc.h>

/* glibc raises its mmap threshold after each large free, so decoded images and uploads
   (megabytes each) end up in the heap and stay resident; pinned at 256 KiB they are mapped
   and unmapped. Two arenas: image threads would each grow one of their own. */
static inline void mv_malloc_tune(void) {
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    mallopt(M_ARENA_MAX, 2);
}

static inline int mv_init(void) { return vips_init("millions"); }
static inline void mv_unref(VipsImage *image) { if (image) g_object_unref(image); }
static inline void mv_free(void *p) { g_free(p); }
static inline const char *mv_error(void) { return vips_error_buffer(); }
static inline void mv_error_clear(void) { vips_error_clear(); }
static inline char *mv_error_copy(void) { return vips_error_buffer_copy(); }
static inline int mv_orientation_swap(VipsImage *in) { return vips_image_get_orientation_swap(in) ? 1 : 0; }
/// For tests: a JPEG that keeps an EXIF orientation tag (as phone pictures do).
static inline int mv_jpeg_oriented(VipsImage *in, void **buf, size_t *len, int orientation) {
    VipsImage *copy = NULL;
    if (vips_copy(in, &copy, NULL)) return -1;
    vips_image_set_int(copy, VIPS_META_ORIENTATION, orientation);
    int r = vips_jpegsave_buffer(copy, buf, len, "Q", 90, NULL);
    g_object_unref(copy);
    return r;
}
static inline void mv_concurrency(int n) { vips_concurrency_set(n); }
static inline void mv_cache_off(void) { vips_cache_set_max(0); }

/// Reads the header only (pixels are decoded later, on demand); corrupt data fails then.
/// Random access decodes the whole image into memory: needed when it must be rotated
/// (an EXIF orientation other than 1), which reads rows out of order.
static inline VipsImage *mv_new_from_buffer_random(const void *buf, size_t len) {
    return vips_image_new_from_buffer(buf, len, "", "access", VIPS_ACCESS_RANDOM, "fail_on", VIPS_FAIL_ON_ERROR, NULL);
}
static inline int mv_orientation(VipsImage *in) { return vips_image_get_orientation(in); }
static inline VipsImage *mv_new_from_buffer(const void *buf, size_t len) {
    return vips_image_new_from_buffer(buf, len, "", "access", VIPS_ACCESS_SEQUENTIAL, "fail_on", VIPS_FAIL_ON_ERROR, NULL);
}
static inline int mv_width(VipsImage *in) { return vips_image_get_width(in); }
static inline int mv_height(VipsImage *in) { return vips_image_get_height(in); }
static inline int mv_bands(VipsImage *in) { return vips_image_get_bands(in); }

/// Shrink-on-load: JPEG and WebP decode at a fraction of their size when that suffices.
static inline int mv_thumbnail_buffer(void *buf, size_t len, VipsImage **out, int width, int height) {
    // 8.14 does not pass the fail_on property to the loader; the option string does,
    // so a truncated file fails instead of becoming a grey thumbnail.
    return vips_thumbnail_buffer(buf, len, out, width, "height", height, "size", VIPS_SIZE_DOWN,
                                 "option_string", "fail_on=error", NULL);
}
static inline int mv_autorot(VipsImage *in, VipsImage **out) { return vips_autorot(in, out, NULL); }
static inline int mv_crop(VipsImage *in, VipsImage **out, int left, int top, int width, int height) {
    return vips_extract_area(in, out, left, top, width, height, NULL);
}
static inline int mv_resize(VipsImage *in, VipsImage **out, double hscale, double vscale) {
    return vips_resize(in, out, hscale, "vscale", vscale, NULL);
}
static inline int mv_sharpen(VipsImage *in, VipsImage **out, double sigma) {
    return vips_sharpen(in, out, "sigma", sigma, NULL);
}
static inline int mv_blur(VipsImage *in, VipsImage **out, double sigma) { return vips_gaussblur(in, out, sigma, NULL); }

static inline int mv_jpeg(VipsImage *in, void **buf, size_t *len, int quality) {
    return vips_jpegsave_buffer(in, buf, len, "Q", quality, "strip", TRUE, NULL);
}
static inline int mv_webp(VipsImage *in, void **buf, size_t *len, int quality) {
    return vips_webpsave_buffer(in, buf, len, "Q", quality, "strip", TRUE, NULL);
}
static inline int mv_png(VipsImage *in, void **buf, size_t *len) {
    return vips_pngsave_buffer(in, buf, len, "strip", TRUE, NULL);
}

/// A width × height sRGB test picture (noise), for tests and benchmarks.
static inline int mv_test_image(VipsImage **out, int width, int height) {
    VipsImage *noise = NULL, *grey = NULL;
    if (vips_gaussnoise(&noise, width, height, "mean", 128.0, "sigma", 40.0, NULL)) return -1;
    int r = vips_cast_uchar(noise, &grey, NULL);
    g_object_unref(noise);
    if (r) return -1;
    r = vips_colourspace(grey, out, VIPS_INTERPRETATION_sRGB, "source_space", VIPS_INTERPRETATION_B_W, NULL);
    g_object_unref(grey);
    return r;
}
#endif
