# make install DESTDIR=/some/root [PREFIX=/usr] — installs cmanlk the way the .deb lays it out:
# the Python package privately under $(PREFIX)/lib/cmanlk/site with the dependencies Debian has
# no new enough version of (pyroute2, dbus-fast); the others (python3-cryptography,
# python3-pyudev: DEBIAN_PROVIDED) come from the distribution. Launchers in $(PREFIX)/sbin,
# systemd/D-Bus/tmpfiles/sysusers files and man pages.
PREFIX ?= /usr
DESTDIR ?=
PYTHON ?= python3
SITE = $(PREFIX)/lib/cmanlk/site
UNITDIR = /lib/systemd/system
PIP_FLAGS ?=
DEBIAN_PROVIDED = cryptography pyudev

.PHONY: all install install-data install-python test demo deb clean

all:
	@echo "targets: install (DESTDIR=, PREFIX=), deb, test, demo"

install: install-python install-data

install-python:
	$(PYTHON) -m pip install --quiet --no-compile --disable-pip-version-check $(PIP_FLAGS) \
		--no-deps --target "$(DESTDIR)$(SITE)" .
	$(PYTHON) -m pip install --quiet --no-compile --disable-pip-version-check $(PIP_FLAGS) \
		--target "$(DESTDIR)$(SITE)" $$($(PYTHON) packaging/private_requirements.py $(DEBIAN_PROVIDED))
	rm -rf "$(DESTDIR)$(SITE)/bin"
	install -d "$(DESTDIR)$(PREFIX)/sbin"
	for tool in cmanlkd:cmanlk.daemon cmanlk-tool:cmanlk.client.cli cmanlk-keygen:cmanlk.keygen cmanlk-sim:cmanlk.sim.cli; do \
		name=$${tool%%:*}; mod=$${tool#*:}; \
		printf '#!/usr/bin/python3 -I\nimport sys\nsys.path.insert(0, "%s")\nfrom %s import main\nsys.exit(main())\n' \
			"$(SITE)" "$$mod" > "$(DESTDIR)$(PREFIX)/sbin/$$name"; \
		chmod 0755 "$(DESTDIR)$(PREFIX)/sbin/$$name"; \
	done

install-data:
	install -D -m 0644 packaging/systemd/cmanlkd.service "$(DESTDIR)$(UNITDIR)/cmanlkd.service"
	install -D -m 0644 packaging/tmpfiles.d/cmanlk.conf "$(DESTDIR)$(PREFIX)/lib/tmpfiles.d/cmanlk.conf"
	install -D -m 0644 packaging/sysusers.d/cmanlk.conf "$(DESTDIR)$(PREFIX)/lib/sysusers.d/cmanlk.conf"
	install -D -m 0644 packaging/dbus-1/org.cmanlk.Cluster.service \
		"$(DESTDIR)$(PREFIX)/share/dbus-1/system-services/org.cmanlk.Cluster.service"
	for f in dbus/*.conf; do [ -e "$$f" ] || continue; \
		install -D -m 0644 "$$f" "$(DESTDIR)$(PREFIX)/share/dbus-1/system.d/$$(basename $$f)"; done
	for f in dbus/*.xml; do [ -e "$$f" ] || continue; \
		install -D -m 0644 "$$f" "$(DESTDIR)$(PREFIX)/share/dbus-1/interfaces/$$(basename $$f)"; done
	install -D -m 0644 packaging/cmanlk.conf.example "$(DESTDIR)/usr/share/doc/cmanlk/examples/cmanlk.conf"
	install -D -m 0644 udev/70-cmanlk-link-names.rules.example \
		"$(DESTDIR)/usr/share/doc/cmanlk/examples/70-cmanlk-link-names.rules"
	install -d "$(DESTDIR)$(PREFIX)/share/man/man8" "$(DESTDIR)$(PREFIX)/share/man/man5"
	$(PYTHON) scripts/md2man.py docs/cmanlkd.8.md cmanlkd 8 | gzip -9n > "$(DESTDIR)$(PREFIX)/share/man/man8/cmanlkd.8.gz"
	$(PYTHON) scripts/md2man.py docs/cmanlk-tool.8.md cmanlk-tool 8 | gzip -9n > "$(DESTDIR)$(PREFIX)/share/man/man8/cmanlk-tool.8.gz"
	$(PYTHON) scripts/md2man.py docs/config.md cmanlk.conf 5 "cmanlk configuration, in corosync.conf syntax" \
		| gzip -9n > "$(DESTDIR)$(PREFIX)/share/man/man5/cmanlk.conf.5.gz"

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

deb:
	bash packaging/build-deb.sh

clean:
	rm -rf build dist *.egg-info debian-build
