# PVKit: two commands matter. `make demo` runs the main job, `make test` runs every test tier.
SWIFT ?= swift
SHELL := /bin/bash

.PHONY: deps build demo test bench fuzz kernels fixtures clean

deps:
	@scripts/install-deps.sh build

build: deps
	$(SWIFT) build

# pvcheck on the bundled fixtures (and on real Debian kernels when cached), then the ABI facts
# and a short ring benchmark.
demo:
	@scripts/install-deps.sh demo
	$(SWIFT) build -c release
	@echo "== pvcheck on a guest root filesystem (fixtures/root)"
	.build/release/pvcheck --root fixtures/root
	@echo "== pvcheck --explain on a PVH-only kernel"
	.build/release/pvcheck --explain fixtures/images/vmlinux-pvh-only.elf
	@echo "== pvcheck on a XenLinux kernel and an arm64 Image"
	-.build/release/pvcheck fixtures/images/vmlinuz-2.6.18-xen-pvkit.gz fixtures/images/Image-arm64.gz
	@echo "== pvcheck --live on this machine"
	.build/release/pvcheck --live
	@echo "== a migration check on real Debian disk images (built once by scripts/make-guests.sh as root, cached)"
	@scripts/make-guests.sh
	@g=$${PVKIT_CACHE:-$$HOME/.cache/pvkit}/guests; if grep -q '^ok' $$g/STATUS 2>/dev/null; then \
	  .build/release/pvcheck --target aws-nitro $$g/xvda/ext4-gpt.raw; \
	  .build/release/pvcheck --target aws-nitro,kvm,xen-pv,xen-hvm $$g/*/ext4-mbr.qcow2 | tail -9; \
	else echo "no guest images: $$(cat $$g/STATUS 2>/dev/null)"; fi; true
	@for k in $${PVKIT_CACHE:-$$HOME/.cache/pvkit}/kernels/*/root/boot/vmlinuz-*; do \
	  [ -f "$$k" ] && echo "== pvcheck --fixes --symbols on $$k" && .build/release/pvcheck --fixes --symbols "$$k"; done; true
	@echo "== pvhost xenstored with pvstore (a dom0 session on a private socket)"
	@scripts/demo-xenstore.sh .build/release
	@echo "== pvhost with two guest processes, pvhost status, a guest killed and reclaimed"
	@scripts/demo-pvhost.sh .build/release
	@echo "== a virtual disk through blkfront/blkback: pvblk writes and verifies it"
	@scripts/demo-pvblk.sh .build/release
	@echo "== two guests on pvhost's switch: frames with pvnet, then (as root) ping between two network namespaces over netfront/netback"
	@scripts/demo-pvnet.sh .build/release
	@if [ -n "$(XEN)" ]; then \
	  echo "== a real Xen under QEMU: pvstore, BlockFront and NetFront in dom0 against Xen's xenstored and Linux's blkback/netback"; \
	  scripts/install-deps.sh test; \
	  for p in pvstore pvblk pvnet; do $(SWIFT) build -c release --build-path .build-static -Xswiftc -static-executable --product $$p || exit 1; done; \
	  for p in pvstore blkfront blkfront-throughput netfront; do \
	    b=$$(case $$p in blkfront*) echo pvblk;; netfront) echo pvnet;; *) echo $$p;; esac); \
	    strip -o /tmp/pvkit-demo-$$b .build-static/release/$$b; \
	    scripts/xen-lab.sh scripts/xenlab/$$p.sh /tmp/pvkit-demo-$$b | sed -n '/XENLAB-DOM0-UP/,/XENLAB-PAYLOAD-DONE/p' | grep -v '^\[ *[0-9]' || exit 1; \
	  done; \
	fi
	@echo "== Xen ABI facts and a short ring benchmark"
	.build/release/ring-bench abi
	.build/release/ring-bench run --quick

# Real Debian kernels for the interop tier, cached outside the repository.
kernels:
	@scripts/fetch-kernels.sh

# Every tier: unit, ABI (against /usr/include/xen), differential (ring.h), cross-process,
# hostile input, command line, real kernels against Xen's readnotes, xenstore interop, pvhost
# with guest processes, blkfront/blkback, netfront/netback (with Linux traffic between network
# namespaces as root), and the real-Xen tier (Xen 4.17 + a Debian dom0 under QEMU: statically
# linked tools from .build-static against Xen's own xenstored). Tests run in parallel, each with
# a time limit; output reaches the log line by line. Before them: the format check, a build that
# treats PVKit's warnings as errors and checks that every import is a declared dependency.
# After them: the ring, queue and XenStore client tests again under ThreadSanitizer (but the
# SIGBUS-guarded copy of a truncated file: the fault lands in TSan's own memcpy, which the
# guard's handler cannot jump out of; that test runs in the main run).
# scripts/test-results.sh reads the xUnit report (PVKIT_NO_SKIPS=1, as in CI: fail on a skip).
TEST_REPORT ?= .build/tests.xml
TSAN_TESTS ?= XenRingTests|BlockConformanceTests|BlockIOQueueTests|NetConformanceTests|XenStoreClientTests|XenStoreLyingDaemonTests|PVSystemTests|XenStoreTests
test: export PVKIT_WARNINGS_AS_ERRORS = 1
test:
	@scripts/install-deps.sh test
	@scripts/fetch-kernels.sh
	@scripts/make-guests.sh
	swift format lint --strict --configuration .swift-format -r Sources Tests Benchmarks
	$(SWIFT) build --build-tests --explicit-target-dependency-import-check error
	$(SWIFT) build -c release --build-path .build-static -Xswiftc -static-executable --product pvstore
	$(SWIFT) build -c release --build-path .build-static -Xswiftc -static-executable --product pvblk
	$(SWIFT) build -c release --build-path .build-static -Xswiftc -static-executable --product pvnet
	set -o pipefail; stdbuf -oL -eL $(SWIFT) test --skip-build --disable-xctest --xunit-output $(TEST_REPORT) 2>&1 | tee .build/test.log
	scripts/test-results.sh $(TEST_REPORT)
	$(SWIFT) build --build-tests --sanitize=thread --build-path .build-tsan
	set -o pipefail; TSAN_OPTIONS=halt_on_error=1 stdbuf -oL -eL $(SWIFT) test --skip-build --disable-xctest --sanitize=thread --build-path .build-tsan \
	  --filter '$(TSAN_TESTS)' --skip truncatedUnderMapping 2>&1 | tee .build/test-tsan.log

# libFuzzer targets (Tests/Fuzz), one per input surface, each FUZZ_SECONDS from corpora kept in
# ~/.cache/pvkit/fuzz; a crash fails the run with its input saved (scripts/fuzz.sh).
FUZZ_SECONDS ?= 60
fuzz:
	@scripts/install-deps.sh test
	$(SWIFT) build -c release --product pvkit-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING --scratch-path .build-fuzz
	scripts/fuzz.sh $(FUZZ_SECONDS)

# The benchmarks behind README.md's performance table (release builds).
bench:
	@scripts/install-deps.sh bench
	@scripts/fetch-kernels.sh
	$(SWIFT) build -c release
	.build/release/ring-bench run
	.build/release/pvcheck-bench
	.build/release/xenstore-bench
	.build/release/pvhost-bench

# Regenerates fixtures/ from fixtures/generate.py (needs gzip, bzip2, xz, lzop, lz4, zstd).
fixtures:
	python3 fixtures/generate.py

clean:
	rm -rf .build
