# Evaluation tests for flake.nix's wiring, with nixpkgs' `lib` but a fake
# nixpkgs input: the overlay, packages (nix/package.nix and
# nix/stand-in-ui.nix called with fake builders that return their
# arguments), nixosModules.default (the flake's package as the default
# supervisorPackage), lib.fetchModel and the overlay's pkgs.fetchModel, and
# the formatter. `checks` need a real nixpkgs and are not evaluated here.
#
#   nix-instantiate --eval --strict --json tests/nix/eval-flake.nix --argstr nixpkgsLib DIR
# Result: [ { name; ok; detail; } ]
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  inherit (lib) types mkOption;

  fakeDrv = attrs: attrs // { type = "derivation"; };

  # Just enough of a package set for the flake's outputs.
  fakePkgsFor =
    system:
    let
      pkgs = {
        inherit lib;
        stdenv.hostPlatform.system = system;
        callPackage = path: overrides: import path (builtins.intersectAttrs (lib.functionArgs (import path)) pkgs // overrides);
        rustPlatform.buildRustPackage =
          args:
          fakeDrv (
            args
            // {
              name = "${args.pname}-${args.version}";
              outPath = "/nix/store/00000000000000000000000000000000-${args.pname}-${args.version}";
            }
          );
        stdenvNoCC.mkDerivation =
          args:
          fakeDrv (
            args
            // {
              name = "${args.pname}-${args.version}";
              outPath = "/nix/store/00000000000000000000000000000000-${args.pname}";
            }
          );
        python3 = fakeDrv {
          name = "python3";
          outPath = "/nix/store/00000000000000000000000000000000-python3";
          meta.mainProgram = "python3";
        };
        makeWrapper = fakeDrv {
          name = "make-wrapper";
          outPath = "/nix/store/00000000000000000000000000000000-make-wrapper";
        };
        fetchurl = args: fakeDrv (args // { outPath = "/nix/store/00000000000000000000000000000000-${args.name}"; });
        nixfmt = fakeDrv {
          name = "nixfmt";
          outPath = "/nix/store/00000000000000000000000000000000-nixfmt";
        };
      };
    in
    pkgs;

  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] fakePkgsFor;
  };

  flake = import ../../flake.nix;
  self = flake.outputs { inherit self nixpkgs; } // {
    outPath = toString ../..;
  };

  pkgs = fakePkgsFor "x86_64-linux";
  ownPkgs = self.overlays.default pkgs pkgs;
  supervisor = self.packages.x86_64-linux.default;
  standIn = self.packages.x86_64-linux.stand-in-ui;
  cargoVersion = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).package.version;

  # nixosModules.default with stand-ins for the NixOS options it sets.
  moduleEval = lib.evalModules {
    modules = [
      {
        options = {
          assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
          warnings = mkOption { type = types.listOf types.str; default = [ ]; };
          systemd = mkOption { type = types.attrsOf types.unspecified; default = { }; };
          users = mkOption { type = types.attrsOf types.unspecified; default = { }; };
          environment = mkOption { type = types.attrsOf types.unspecified; default = { }; };
          services.dbus = mkOption { type = types.attrsOf types.unspecified; default = { }; };
          networking = mkOption { type = types.attrsOf types.unspecified; default = { }; };
        };
      }
      self.nixosModules.default
      { _module.args.pkgs = pkgs; }
    ];
  };

  fetchArgs = {
    url = "https://huggingface.co/x/y/resolve/main/sd_xl_base_1.0.safetensors?download=true";
    hash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
  };

  check = name: ok: detail: {
    inherit name ok;
    detail = if ok then "" else builtins.toJSON detail;
  };
  eq =
    name: got: expected:
    check name (got == expected) { inherit got expected; };
in
[
  (eq "flake: packages for x86_64-linux and aarch64-linux" (builtins.attrNames self.packages) [
    "aarch64-linux"
    "x86_64-linux"
  ])
  (eq "flake: packages.default is the supervisor" supervisor.pname "sd-webui-supervisor")
  (eq "flake: the version comes from Cargo.toml" supervisor.version cargoVersion)
  (eq "flake: built from Cargo.lock" supervisor.cargoLock.lockFile ../../Cargo.lock)
  (check "flake: the package installs the D-Bus policy under share/dbus-1/system.d" (
    lib.hasInfix "dbus/io.github.sd_webui_supervisor.Supervisor1.conf" supervisor.postInstall
    && lib.hasInfix "$out/share/dbus-1/system.d" supervisor.postInstall
  ) supervisor.postInstall)
  (eq "flake: the package's mainProgram" supervisor.meta.mainProgram "sd-webui-supervisor")
  # lib.fileset needs builtins.readFileType (Nix >= 2.14, as nixpkgs does); with
  # an older Nix (Debian bookworm has 2.8) this is a note, not a skip: no
  # prerequisite a CI machine could install would change it.
  (
    if builtins ? readFileType then
      check "flake: the package's source is a fileset of the build's inputs" (
        builtins.tryEval supervisor.src.outPath
      ).success ""
    else
      {
        name = "flake: the package's source (lib.fileset needs Nix >= 2.14; this is ${builtins.nixVersion})";
        ok = true;
        note = true;
        detail = "";
      }
  )
  (eq "flake: stand-in-ui runs examples/stand_in_ui.py" standIn.src ../../examples/stand_in_ui.py)
  (eq "flake: stand-in-ui's mainProgram" standIn.meta.mainProgram "stand-in-ui")
  (check "flake: stand-in-ui wraps python3 -u" (lib.hasInfix "-u $out/share/sd-webui-stand-in-ui/stand_in_ui.py" standIn.installPhase) standIn.installPhase)
  (eq "flake: the overlay adds the packages" (builtins.attrNames ownPkgs) [
    "fetchModel"
    "sd-webui-stand-in-ui"
    "sd-webui-supervisor"
  ])
  (eq "flake: nixosModules.default defaults supervisorPackage to the flake's package"
    moduleEval.config.services.sd-webui-forge.supervisorPackage.outPath
    supervisor.outPath
  )
  (eq "flake: lib.fetchModel names the store path after the model" (self.lib.fetchModel fetchArgs).name
    "sd_xl_base_1.0.safetensors"
  )
  (eq "flake: lib.modelName" (self.lib.modelName { inherit (fetchArgs) url; }) "sd_xl_base_1.0.safetensors")
  (eq "flake: the overlay's fetchModel is pkgs.fetchurl with the same name" (
    let
      f = ownPkgs.fetchModel (fetchArgs // { curlOptsList = [ "--netrc" ]; });
    in
    {
      inherit (f) name url hash curlOptsList;
    }
  ) {
    name = "sd_xl_base_1.0.safetensors";
    inherit (fetchArgs) url hash;
    curlOptsList = [ "--netrc" ];
  })
  (eq "flake: formatter is nixfmt" self.formatter.x86_64-linux.name "nixfmt")
]
