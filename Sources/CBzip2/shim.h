// libbz2 for bzip2 payloads. Debian ships no pkg-config file for it: linked by name.
#include <stdio.h>
#include <bzlib.h>
