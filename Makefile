# PVKit: two commands matter. `make demo` runs the main job, `make test` runs every test tier.
SWIFT ?= swift
SCRATCH_RELEASE ?= .build

.PHONY: deps test-deps build demo test bench clean

deps:
	@scripts/install-deps.sh build

test-deps:
	@scripts/install-deps.sh test

build: deps
	$(SWIFT) build

# Prints the ABI facts and runs the ring benchmark briefly (release build).
demo: deps
	$(SWIFT) build -c release --product ring-bench
	$(SWIFT) build -c release --product ring-bench-c
	.build/release/ring-bench abi
	.build/release/ring-bench run --quick

# Every tier: unit, ABI (against /usr/include/xen), differential (ring.h), cross-process.
test: test-deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-xctest

# The full benchmark, side by side with the C ring.h harness; numbers go in README.md.
bench: deps
	$(SWIFT) build -c release --product ring-bench
	$(SWIFT) build -c release --product ring-bench-c
	.build/release/ring-bench run

clean:
	rm -rf .build
