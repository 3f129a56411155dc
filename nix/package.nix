# The sd-webui-supervisor package, built from the repository's Cargo.lock.
{
  lib,
  rustPlatform,
}:
let
  root = ../.;
  cargoToml = lib.importTOML (root + "/Cargo.toml");
in
rustPlatform.buildRustPackage {
  pname = "sd-webui-supervisor";
  inherit (cargoToml.package) version;

  # Only what the build reads, so editing docs or Nix files does not rebuild.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/build.rs")
      (root + "/src")
      (lib.fileset.maybeMissing (root + "/dbus"))
      (lib.fileset.maybeMissing (root + "/benches"))
      (lib.fileset.maybeMissing (root + "/examples"))
      (lib.fileset.maybeMissing (root + "/tests"))
    ];
  };

  cargoLock.lockFile = root + "/Cargo.lock";

  # The unit tests only: the integration tests need a real systemd
  # (scripts/systemd-sandbox, as root) and run in the project's CI.
  cargoTestFlags = [ "--lib" ];

  # The D-Bus policy that lets the service user own the bus name; module.nix
  # adds this package to services.dbus.packages.
  postInstall = ''
    install -Dm644 dbus/io.github.sd_webui_supervisor.Supervisor1.conf \
      -t "$out/share/dbus-1/system.d"
  '';

  meta = {
    description = "Runs a Stable Diffusion web UI under systemd: readiness, live reloads, restarts only when the queue is idle";
    mainProgram = "sd-webui-supervisor";
    platforms = lib.platforms.linux;
  };
}
