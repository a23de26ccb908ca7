/* launcher.data._jpeg: decode only a rectangle of a JPEG (libjpeg-turbo's jpeg_crop_scanline and
 * jpeg_skip_scanlines), the fused decode + crop of DALI's ImageDecoderRandomCrop and TensorFlow's
 * decode_and_crop_jpeg. Rows below the crop are never entropy-decoded; rows above it and columns
 * beside it are entropy-decoded but not inverse-DCT'd, upsampled or colour-converted. The pixels
 * equal those of a full decode (same library, ISLOW DCT, fancy upsampling) cut to the rectangle.
 *
 *   size(data) -> (height, width)                      reads the header only
 *   decode_crop(data, top, left, height, width, max_scans=0) -> bytearray of height*width*3 (RGB)
 *
 * Anything libjpeg cannot turn into RGB (CMYK, broken or truncated data) raises ValueError;
 * launcher.data then decodes the file the usual way. A file of more than max_scans scans (0: no
 * bound) raises LimitError as soon as libjpeg reaches the scan after the last allowed one: libjpeg
 * has no limit of its own, and a progressive JPEG of 1000 tiny scans costs seconds (TensorFlow and
 * Chromium stop such files the same way, from a progress monitor). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
    int over_limit;
};

static PyObject *LimitError;

struct scan_monitor {
    struct jpeg_progress_mgr pub;
    struct error_manager *err;
    int max_scans;
};

static void error_exit(j_common_ptr cinfo)
{
    struct error_manager *err = (struct error_manager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->escape, 1);
}

/* Warnings (extraneous bytes, a short data segment) are not errors, as in torchvision.io; a file that
 * ends before its last needed row is (torchvision.io fails on it too). */
static void on_message(j_common_ptr cinfo, int level)
{
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
        error_exit(cinfo);
}

/* Called by libjpeg between passes and while it consumes the scans of a multi-scan file. */
static void count_scans(j_common_ptr cinfo)
{
    struct scan_monitor *monitor = (struct scan_monitor *)cinfo->progress;
    j_decompress_ptr dinfo = (j_decompress_ptr)cinfo;
    if (dinfo->input_scan_number > monitor->max_scans) {
        snprintf(monitor->err->message, JMSG_LENGTH_MAX, "more than %d scans", monitor->max_scans);
        monitor->err->over_limit = 1;
        longjmp(monitor->err->escape, 1);
    }
}

/* Open `data` and read its header; 0 on success. On failure `err->message` says why. */
static int open_jpeg(struct jpeg_decompress_struct *cinfo, struct error_manager *err, const Py_buffer *data)
{
    cinfo->err = jpeg_std_error(&err->pub);
    err->over_limit = 0;
    err->pub.error_exit = error_exit;
    err->pub.emit_message = on_message;
    jpeg_create_decompress(cinfo);
    if (setjmp(err->escape))
        return -1;
    jpeg_mem_src(cinfo, (const unsigned char *)data->buf, (unsigned long)data->len);
    jpeg_read_header(cinfo, TRUE);
    if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
        strcpy(err->message, "CMYK JPEG (no RGB conversion in libjpeg)");
        return -1;
    }
    cinfo->out_color_space = JCS_RGB;
    cinfo->dct_method = JDCT_ISLOW;
    return 0;
}

static PyObject *size(PyObject *self, PyObject *args)
{
    Py_buffer data;
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    if (open_jpeg(&cinfo, &err, &data) == 0)
        result = Py_BuildValue("(II)", cinfo.image_height, cinfo.image_width);
    else
        PyErr_Format(PyExc_ValueError, "not a decodable JPEG: %s", err.message);
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    return result;
}

/* Decode rows [top, top + height) and columns [left, left + width) into out (height*width*3 bytes);
 * `rows` is scratch for height row pointers, `buffer` for height rows of the whole image width. */
static int read_crop(struct jpeg_decompress_struct *cinfo, struct error_manager *err, unsigned char *out,
                     unsigned top, unsigned left, unsigned height, unsigned width, JSAMPROW *rows,
                     unsigned char *buffer)
{
    JDIMENSION xoffset, cropped;
    volatile JDIMENSION done = 0;
    unsigned y, shift, stride;
    if (setjmp(err->escape))
        return -1;
    jpeg_start_decompress(cinfo);
    if (cinfo->output_components != 3) {
        strcpy(err->message, "not 3 components after RGB conversion");
        return -1;
    }
    /* One pixel more on the left (so one iMCU) and one iMCU more on the right where the image has them:
       fancy upsampling treats the region's edge columns as the image's, which would change the crop's. */
    xoffset = left > 0 ? left - 1 : 0;
    cropped = left + width + cinfo->max_h_samp_factor * DCTSIZE - xoffset;
    if (xoffset + cropped > cinfo->output_width)
        cropped = cinfo->output_width - xoffset;
    if (xoffset > 0 || cropped < cinfo->output_width)
        jpeg_crop_scanline(cinfo, &xoffset, &cropped); /* xoffset moves left to an iMCU boundary */
    shift = (left - xoffset) * 3;
    stride = cinfo->output_width * 3;
    if (top > 0 && jpeg_skip_scanlines(cinfo, top) != top) {
        strcpy(err->message, "fewer rows than the header says");
        return -1;
    }
    for (y = 0; y < height; y++)
        rows[y] = buffer + (size_t)y * stride;
    while (done < height) {
        JDIMENSION n = jpeg_read_scanlines(cinfo, rows + done, height - done);
        if (n == 0) {
            strcpy(err->message, "fewer rows than the header says");
            return -1;
        }
        done += n;
    }
    for (y = 0; y < height; y++)
        memcpy(out + (size_t)y * width * 3, rows[y] + shift, (size_t)width * 3);
    jpeg_abort_decompress(cinfo); /* the rows below are never decoded */
    return 0;
}

static PyObject *decode_crop(PyObject *self, PyObject *args)
{
    Py_buffer data;
    unsigned top, left, height, width;
    int max_scans = 0;
    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    struct scan_monitor monitor;
    PyObject *out = NULL;
    JSAMPROW *rows = NULL;
    unsigned char *buffer = NULL;
    int failed = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*IIII|i", &data, &top, &left, &height, &width, &max_scans))
        return NULL;
    if (open_jpeg(&cinfo, &err, &data) != 0) {
        PyErr_Format(PyExc_ValueError, "not a decodable JPEG: %s", err.message);
        goto done;
    }
    if (max_scans > 0) {
        monitor.pub.progress_monitor = count_scans;
        monitor.err = &err;
        monitor.max_scans = max_scans;
        cinfo.progress = &monitor.pub;
    }
    if (height == 0 || width == 0 || top + height > cinfo.image_height || left + width > cinfo.image_width) {
        PyErr_Format(PyExc_ValueError, "crop %ux%u at (%u, %u) is outside the %ux%u image", height, width, top,
                     left, cinfo.image_height, cinfo.image_width);
        goto done;
    }
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)height * width * 3);
    rows = PyMem_RawMalloc(sizeof(JSAMPROW) * height);
    buffer = PyMem_RawMalloc((size_t)height * cinfo.image_width * 3 + 64);
    if (out == NULL || rows == NULL || buffer == NULL) {
        Py_CLEAR(out);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    failed = read_crop(&cinfo, &err, (unsigned char *)PyByteArray_AS_STRING(out), top, left, height, width, rows,
                       buffer);
    Py_END_ALLOW_THREADS
    if (failed) {
        Py_CLEAR(out);
        if (err.over_limit)
            PyErr_Format(LimitError, "%s", err.message);
        else
            PyErr_Format(PyExc_ValueError, "not a decodable JPEG: %s", err.message);
    }
done:
    PyMem_RawFree(rows);
    PyMem_RawFree(buffer);
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef methods[] = {
    {"size", size, METH_VARARGS, "size(data) -> (height, width) from the JPEG header"},
    {"decode_crop", decode_crop, METH_VARARGS,
     "decode_crop(data, top, left, height, width, max_scans=0) -> bytearray of the RGB rectangle (row-major, 3 "
     "bytes a pixel); LimitError past max_scans scans (0: no bound)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "launcher.data._jpeg", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jpeg(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    LimitError = PyErr_NewExceptionWithDoc("launcher.data._jpeg.LimitError",
                                           "The JPEG exceeds a bound given to decode_crop (max_scans).", NULL, NULL);
    if (LimitError == NULL || PyModule_AddObjectRef(m, "LimitError", LimitError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
