# `make install`: kleened, its `kleened` command, and the files a host needs.
#
#   make install                             # into /usr/local
#   make install DESTDIR=/tmp/stage          # staged, for a package
#   make install PYTHON=python3.11           # FreeBSD: the interpreter kleened runs on
#   make install PIP_FLAGS=                  # let pip fetch the Python dependencies too
#
# Included by the top Makefile, or alone: make -f mk/install.mk install.
# Run it from the top of the source tree. Written for both GNU make and
# FreeBSD's make: no conditionals, the logic lives in the shell.
#
# Installed, under $(DESTDIR)$(PREFIX):
#   bin/kleened, lib/pythonX.Y/site-packages/kleened    (pip)
#   etc/rc.d/kleened                                    FreeBSD service, mode 555
#   etc/kleened/kleened.yaml.sample                     the configuration, documented
#   etc/kleened/pf.conf.kleene.sample                   the pf template; `kleened init`
#                                                       copies it to pf.conf.kleene
#   etc/newsyslog.conf.d/kleened.conf                   rotation of /var/log/kleened.log
#   lib/systemd/system/kleened.service                  Linux service
# and, on FreeBSD without DESTDIR, etc/kleened/kleened.yaml from the sample if
# there is none yet (a package does the same with @sample).

PREFIX ?= /usr/local
DESTDIR ?=
PYTHON ?= python3
# Packages take the dependencies from their package system; empty: from PyPI.
PIP_FLAGS ?= --no-deps
PF_TEMPLATE ?= etc/pf.conf.kleene

INSTALL_ETC = $(DESTDIR)$(PREFIX)/etc
INSTALL_SYSTEMD = $(DESTDIR)$(PREFIX)/lib/systemd/system
# The files name /usr/local; a package built for another PREFIX gets its own.
SUBST_PREFIX = sed -e 's|/usr/local/|$(PREFIX)/|g'

.PHONY: install install-python install-files

install: install-python install-files

# pip builds in a scratch directory (DIST_EXTRA_CONFIG points setuptools'
# build/ and egg-info there), so the source tree stays clean and a stale
# build/lib never ships. --ignore-installed unless the target is the
# interpreter's own prefix: without it pip first uninstalls any kleened in
# the running environment (a developer's editable install, say), wherever
# DESTDIR and PREFIX point.
install-python:
	@scratch=$$(mktemp -d) || exit 1; \
	printf '[build]\nbuild_base = %s/build\n[egg_info]\negg_base = %s\n' \
	    "$$scratch" "$$scratch" > "$$scratch/setup.cfg"; \
	own_prefix=$$($(PYTHON) -c 'import sys; print(sys.prefix)'); \
	keep=--ignore-installed; \
	if [ -z "$(DESTDIR)" ] && [ "$$own_prefix" = "$(PREFIX)" ]; then keep=; fi; \
	echo "$(PYTHON) -m pip install $(PIP_FLAGS) $$keep --root=$(DESTDIR)/ --prefix=$(PREFIX) ."; \
	DIST_EXTRA_CONFIG="$$scratch/setup.cfg" $(PYTHON) -m pip install $(PIP_FLAGS) $$keep \
	    --no-warn-script-location --root="$(DESTDIR)/" --prefix="$(PREFIX)" .; \
	status=$$?; rm -rf "$$scratch"; exit $$status

install-files:
	@test -f "$(PF_TEMPLATE)" || { echo "install: $(PF_TEMPLATE) is missing" >&2; exit 1; }
	install -d -m 755 "$(INSTALL_ETC)/rc.d" "$(INSTALL_ETC)/kleened" \
	    "$(INSTALL_ETC)/newsyslog.conf.d" "$(INSTALL_SYSTEMD)"
# sed writes through the old file's mode: clear a read-only one first
	rm -f "$(INSTALL_ETC)/rc.d/kleened" "$(INSTALL_ETC)/kleened/kleened.yaml.sample" \
	    "$(INSTALL_SYSTEMD)/kleened.service"
	$(SUBST_PREFIX) rc.d/kleened > "$(INSTALL_ETC)/rc.d/kleened"
	chmod 555 "$(INSTALL_ETC)/rc.d/kleened"
	$(SUBST_PREFIX) etc/kleened.yaml.sample > "$(INSTALL_ETC)/kleened/kleened.yaml.sample"
	chmod 644 "$(INSTALL_ETC)/kleened/kleened.yaml.sample"
	install -m 644 "$(PF_TEMPLATE)" "$(INSTALL_ETC)/kleened/pf.conf.kleene.sample"
	install -m 644 etc/newsyslog.conf.d/kleened.conf "$(INSTALL_ETC)/newsyslog.conf.d/kleened.conf"
	$(SUBST_PREFIX) etc/kleened.service > "$(INSTALL_SYSTEMD)/kleened.service"
	chmod 644 "$(INSTALL_SYSTEMD)/kleened.service"
	@config="$(INSTALL_ETC)/kleened/kleened.yaml"; \
	if [ -z "$(DESTDIR)" ] && [ "$$(uname -s)" = FreeBSD ] && [ ! -e "$$config" ]; then \
	    echo "install -m 644 $$config.sample $$config"; \
	    install -m 644 "$$config.sample" "$$config"; \
	fi
