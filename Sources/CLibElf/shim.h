// elfutils libelf for ELF headers, program headers, sections and notes.
#include <libelf.h>
#include <gelf.h>
