# Shared by CMakeLists.txt and the fallback interface packages in interfaces/.
# ---------------------------------------------------------------------------------------------
# Workaround for the PyPI wheels (no-op on a normal ROS install).
#
# The wheels' exported `<pkg>::<pkg>__rosidl_generator_py` targets carry the wheel build
# machine's Python and numpy include directories (/opt/python/cp311-cp311/...). Linking our
# generated library against them makes CMake stop at generate time with "Imported target ...
# includes non-existent path". Entries that do not exist and look like a Python or numpy include
# directory are replaced by this interpreter's; everything else, including any existing directory,
# is left untouched, so on apt installs (where the paths exist) nothing changes.
function(omnibind_fix_imported_python_include_dirs)
  if(CMAKE_VERSION VERSION_LESS 3.21)
    # IMPORTED_TARGETS needs 3.21; every platform with the wheels has a newer cmake.
    return()
  endif()
  get_directory_property(_targets DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" IMPORTED_TARGETS)
  set(_fixed "")
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "\\$<" OR EXISTS "${_dir}")
        list(APPEND _new_dirs "${_dir}")
      elseif(_dir MATCHES "numpy")
        _omnibind_python_dev_dirs()
        list(APPEND _new_dirs ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(_dir MATCHES "/include/python3")
        _omnibind_python_dev_dirs()
        list(APPEND _new_dirs ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _new_dirs "${_dir}")  # unknown: let CMake report it
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new_dirs)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
      list(APPEND _fixed ${_target})
    endif()
  endforeach()
  if(_fixed)
    list(LENGTH _fixed _count)
    message(STATUS "omnibind_ros: replaced missing Python/numpy include dirs of ${_count} "
      "imported targets (PyPI ROS wheels) with ${Python3_INCLUDE_DIRS};"
      "${Python3_NumPy_INCLUDE_DIRS}")
  endif()
endfunction()

# Same components as rosidl_generator_py asks for; ament already fixed the interpreter, so this
# only adds the include directories. A macro, so the results reach the caller's scope.
macro(_omnibind_python_dev_dirs)
  if(NOT Python3_NumPy_INCLUDE_DIRS OR NOT Python3_INCLUDE_DIRS)
    find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  endif()
endmacro()
