# Evaluation tests for flake.nix's wiring, with nixpkgs' `lib` but a fake
# nixpkgs input: the overlay, packages (nix/package.nix and
# nix/stand-in-ui.nix called with fake builders that return their
# arguments), nixosModules.default (the flake's package as the default
# supervisorPackage), lib.fetchModel and the overlay's pkgs.fetchModel, and
# the formatter, and the container images (nix/image.nix with a fake
# dockerTools that returns its arguments: entrypoint, volume, ports, the
# config file it bakes in, which tests/nix/check.sh runs through the real
# `check-config`). `checks` need a real nixpkgs and are not evaluated here;
# nothing is built: the image's layers, the closure and the CUDA ComfyUI of
# packages.image (another nixpkgs import) are not checked.
#
#   nix-instantiate --eval --strict --json tests/nix/eval-flake.nix --argstr nixpkgsLib DIR
# Result: { results = [ { name; ok; detail; } ]; configs = { NAME = TOML; }; }
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  inherit (lib) types mkOption;

  fakeDrv = attrs: attrs // { type = "derivation"; };
  toTOML = import ./toml.nix;

  # Just enough of a package set for the flake's outputs.
  fakePkgsFor =
    system:
    let
      pkgs = {
        inherit lib pkgs;
        dockerTools.streamLayeredImage =
          args:
          fakeDrv (
            args
            // {
              outPath = "/nix/store/00000000000000000000000000000000-${args.name}.tar.gz";
            }
          );
        runCommand =
          name: env: script:
          fakeDrv {
            inherit name env script;
            outPath = "/nix/store/00000000000000000000000000000000-${name}";
          };
        formats.toml = _: {
          type = types.attrsOf types.unspecified;
          generate =
            name: value:
            fakeDrv {
              inherit name value;
              text = toTOML value;
              outPath = "/nix/store/00000000000000000000000000000000-${name}";
            };
        };
        cacert = fakeDrv {
          name = "cacert";
          outPath = "/nix/store/00000000000000000000000000000000-cacert";
        };
        git = fakeDrv {
          name = "git";
          outPath = "/nix/store/00000000000000000000000000000000-git";
        };
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
  ownPkgs = self.overlays.default (pkgs // ownPkgs) pkgs;
  supervisor = self.packages.x86_64-linux.default;
  standIn = self.packages.x86_64-linux.stand-in-ui;
  cargoVersion = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).package.version;

  # nixosModules.default with stand-ins for the NixOS options it sets.
  moduleEvalWith =
    settings:
    lib.evalModules {
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
            security = mkOption { type = types.attrsOf types.unspecified; default = { }; };
          };
        }
        self.nixosModules.default
        { _module.args.pkgs = pkgs; }
        { services.sd-webui-forge = settings; }
      ];
    };
  moduleEval = moduleEvalWith { };

  # The container images: what the stream's arguments say, and the config
  # file baked in (its value before TOML, and the TOML text).
  standInImage = self.packages.x86_64-linux.image-stand-in;
  bakedValue = image: image.passthru.configFile.env.unchecked.value;
  bakedText = image: image.passthru.configFile.env.unchecked.text;
  fakeComfy = fakeDrv {
    name = "comfyui";
    outPath = "/nix/store/00000000000000000000000000000000-comfyui";
    meta.mainProgram = "comfyui";
  };
  comfyImage = ownPkgs.sd-webui-image {
    settings = {
      flavor = "comfyui";
      package = fakeComfy;
      gpus = [ 0 ];
      models.diffusion_models."flux.safetensors" = "/models/flux.safetensors";
    };
  };
  tokenPath = "/run/secrets/sd-webui-forge/control-token";
  # The same settings through the NixOS module: the config file must differ
  # only where a container must (no D-Bus, secrets where they are mounted).
  sharedSettings = {
    package = standIn;
    listen = true;
    environment.STANDIN_JOB_SECONDS = "20";
    stopTimeout = "20s";
    control.httpListen = "0.0.0.0:7870";
    control.tokenFile = tokenPath;
  };
  moduleValue = (moduleEvalWith (sharedSettings // { enable = true; }))
  .config.services.sd-webui-forge.configFile.env.unchecked.value;
  frontAuthPath = "/run/secrets/sd-webui-forge/front-auth";
  # ComfyUI (no authentication of its own) on a network behind the front door.
  frontImage = ownPkgs.sd-webui-image {
    settings = {
      flavor = "comfyui";
      package = fakeComfy;
      listen = true;
      front = {
        authFile = frontAuthPath;
        holdTimeout = "10m";
      };
    };
  };
  imageThrows = settings: !(builtins.tryEval (ownPkgs.sd-webui-image { inherit settings; }).name).success;

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
  mentions = needles: s: lib.all (n: lib.hasInfix n s) needles;
in
{
  configs = {
    image-stand-in = bakedText standInImage;
    image-comfyui = bakedText comfyImage;
    image-front = bakedText frontImage;
  };
  results = [
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
    "sd-webui-image"
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
  (eq "image: the supervisor is the entrypoint, with the baked-in config" standInImage.config.Entrypoint [
    "${supervisor}/bin/sd-webui-supervisor"
    "run"
    "--config"
    "/etc/sd-webui-forge/config.toml"
  ])
  (check "image: the config file is linked at /etc/sd-webui-forge/config.toml" (
    let
      etc = builtins.head standInImage.contents;
    in
    lib.hasInfix "ln -s ${standInImage.passthru.configFile} \"$out/etc/sd-webui-forge/config.toml\"" etc.script
  ) (builtins.head standInImage.contents).script)
  (eq "image: the supervisor, the UI and (Forge: GitPython at start) git are on PATH (/bin)" [
    (map (p: p.name) (builtins.tail standInImage.contents))
    (builtins.elem "PATH=/bin" standInImage.config.Env)
  ] [ [ "sd-webui-supervisor-${cargoVersion}" "sd-webui-stand-in-ui-0.1.0" "git" ] true ])
  (eq "image: the data dir is a volume" standInImage.config.Volumes { "/var/lib/sd-webui-forge" = { }; })
  (eq "image: the UI's and the control API's ports are exposed" (builtins.attrNames standInImage.config.ExposedPorts) [
    "7860/tcp"
    "7870/tcp"
  ])
  (eq "image: SIGTERM stops it" standInImage.config.StopSignal "SIGTERM")
  (check "image: the data dir and the control socket's folder exist" (
    mentions [ "./var/lib/sd-webui-forge" "run/sd-webui-forge" ] standInImage.extraCommands
  ) standInImage.extraCommands)
  (eq "image: the stand-in image runs the stand-in UI" (bakedValue standInImage).ui.command [
    "${standIn}/bin/stand-in-ui"
  ])
  (eq "image: no D-Bus in a container, the token file where the secret is mounted" (bakedValue standInImage).control {
    socket = "/run/sd-webui-forge/control.sock";
    dbus = "off";
    http_listen = "0.0.0.0:7870";
    token_file = tokenPath;
    max_connections = 128;
  })
  # [supervisor] (self-upgrade of a systemd service) has no meaning in an
  # image: a new image is a new container.
  (eq "image: the config is the NixOS module's for the same settings, but for D-Bus, where the token is and [supervisor]" (bakedValue standInImage) (
    lib.recursiveUpdate (removeAttrs moduleValue [ "supervisor" ]) {
      control.dbus = "off";
      control.token_file = tokenPath;
    }
  ))
  (eq "image: checked at build time with check-config" (
    lib.hasInfix "bin/sd-webui-supervisor check-config --config" standInImage.passthru.configFile.script
  ) true)
  (eq "image: a ComfyUI image runs the package's mainProgram" (bakedValue comfyImage).ui.command [
    "${fakeComfy}/bin/comfyui"
  ])
  (eq "image: a ComfyUI image without a control listener exposes the UI's port" (builtins.attrNames comfyImage.config.ExposedPorts) [ "8188/tcp" ])
  (check "image: a secret as a Nix path (copied into the store) is refused" (imageThrows {
    package = standIn;
    control.httpListen = "0.0.0.0:7870";
    control.tokenFile = ./eval-flake.nix;
  }) "")
  (eq "image: front.authFile is where the secret is mounted; only the UI's port is exposed" {
    inherit ((bakedValue frontImage)) front;
    ports = builtins.attrNames frontImage.config.ExposedPorts;
  } {
    front = {
      auth_file = frontAuthPath;
      hold_timeout = "10m";
    };
    ports = [ "8188/tcp" ];
  })
  (eq "image: no front options, no [front]" ((bakedValue standInImage) ? front) false)
  (check "image: front.authFile as a Nix path (copied into the store) is refused" (imageThrows {
    package = standIn;
    front.authFile = ./eval-flake.nix;
  }) "")
  (check "image: the module's assertions hold (CUDA_VISIBLE_DEVICES refused)" (imageThrows {
    package = standIn;
    environment.CUDA_VISIBLE_DEVICES = "0";
  }) "")
  (check "image: a model kind the flavor does not use is refused" (imageThrows {
    package = standIn;
    models.diffusion_models."a.safetensors" = "/m/a.safetensors";
  }) "")
  (eq "image: packages.image (CUDA ComfyUI) on x86_64-linux only" [
    (self.packages.x86_64-linux ? image)
    (self.packages.aarch64-linux ? image)
  ] [ true false ])
  (check "image: the image's own settings evaluate, as do valid ones given to the overlay's function" (
    (builtins.tryEval standInImage.name).success
    && !imageThrows {
      package = standIn;
      control.httpListen = "0.0.0.0:7870";
      control.tokenFile = tokenPath;
    }
  ) "")
  ];
}
