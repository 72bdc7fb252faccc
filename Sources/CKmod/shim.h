// libkmod for module directories, aliases and modinfo.
#include <libkmod.h>
